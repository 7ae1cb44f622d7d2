"""Run profiles: the canonical sizes and settings of every step, one table for CLI and pipeline.

`test` is tiny (the test suite, with tiny models), `demo` finishes the whole flow on a 2-core CPU in
under 10 minutes with the real default models, `reduced` is the Home Depot profile a 2-core CPU
finishes in under 2 hours, `full` is for one GPU. Each field holds keyword arguments for the step's
config dataclass (PrepareConfig, TeacherConfig, AugmentConfig, label settings, StudentConfig).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    synthetic: dict = field(default_factory=dict)  # SyntheticConfig kwargs (embedded default data)
    prepare: dict = field(default_factory=dict)  # PrepareConfig kwargs
    teacher: dict = field(default_factory=dict)  # TeacherConfig kwargs
    augment: dict = field(default_factory=dict)  # AugmentConfig kwargs
    label: dict = field(default_factory=dict)  # label_shard kwargs: batch_size; num_shards
    student: dict = field(default_factory=dict)  # StudentConfig kwargs
    evaluate: dict = field(default_factory=dict)  # evaluate_checkpoint kwargs: batch_size

    def with_models(self, teacher_base: str | None, student_base: str | None) -> Profile:
        """The same profile with other base models (tests pass tiny model directories here)."""
        teacher = {**self.teacher, "base_model": teacher_base} if teacher_base else self.teacher
        student = {**self.student, "base_model": student_base} if student_base else self.student
        return replace(self, teacher=teacher, student=student)


PROFILES: dict[str, Profile] = {
    "test": Profile(
        name="test", description="tiny sizes for the test suite (pass tiny models with with_models)",
        synthetic={"n_products": 300, "n_queries": 40, "pairs_per_query": 6, "seed": 7},
        prepare={"val_fraction": 0.2, "test_fraction": 0.2},
        teacher={"epochs": 1.0, "batch_size": 8, "max_length": 64},
        augment={"multiple": 1.0, "biencoder_k": 5, "bm25_k": 5, "random_per_query": 1, "batch_size": 64},
        label={"batch_size": 32, "num_shards": 2},
        student={"epochs": 1.0, "batch_size": 8, "max_length": 64},
        evaluate={"batch_size": 32},
    ),
    "demo": Profile(
        name="demo", description="synthetic default data, real default models, < 10 min on a 2-core CPU",
        # Sized for the 135M teacher on 2 CPU cores (~5 s per training step of 16, ~10 pairs/s labelling).
        synthetic={"n_products": 1500, "n_queries": 80, "pairs_per_query": 8, "seed": 7},
        prepare={"val_fraction": 0.1, "test_fraction": 0.15},
        teacher={"epochs": 1.0, "batch_size": 16, "max_length": 64, "max_train_pairs": 192,
                 "learning_rate": 1e-4},
        augment={"multiple": 0.25, "biencoder_k": 10, "bm25_k": 10, "random_per_query": 1},
        label={"batch_size": 32, "num_shards": 2},
        student={"epochs": 2.0, "batch_size": 16, "max_length": 64, "calibration_rows": 500},
        evaluate={"batch_size": 64},
    ),
    "reduced": Profile(
        name="reduced", description="Home Depot subset on a 2-core CPU in under 2 hours (estimated, see docs)",
        # Estimated from measured step costs on 2 CPU cores (teacher ~0.5 s per training pair, ~0.1 s per
        # labelled pair; student ~36 pairs/s): about 70 minutes. Not yet run end to end.
        prepare={"max_queries": 1200, "val_fraction": 0.1, "test_fraction": 0.2},
        teacher={"epochs": 1.0, "batch_size": 16, "max_length": 64, "max_train_pairs": 2000,
                 "learning_rate": 5e-5},
        augment={"multiple": 2.0},
        label={"batch_size": 64, "num_shards": 2},
        student={"epochs": 2.0, "batch_size": 32, "max_length": 64},
        evaluate={"batch_size": 64},
    ),
    "full": Profile(
        name="full", description="all Home Depot data on one GPU",
        prepare={"val_fraction": 0.1, "test_fraction": 0.2},
        teacher={"epochs": 2.0, "batch_size": 64, "max_length": 96, "learning_rate": 5e-5},
        augment={"multiple": 8.0},
        label={"batch_size": 512, "num_shards": 4},
        student={"epochs": 3.0, "batch_size": 64, "max_length": 96},
        evaluate={"batch_size": 512},
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile '{name}'; choose one of {sorted(PROFILES)}") from None
