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
    # `kdrank experiment` plan: multiples (augmented sizes of the scaling curve), seeds, ensemble_size,
    # teacher_ablations (NAME -> teacher settings), ensemble_recipes (ablations also run as an ensemble),
    # mixed_ensembles (NAME -> teacher runs of different recipes, composed as one ensemble), distil_teachers
    # (teacher runs or ensembles whose labels also teach a student of their own, at the largest size;
    # TEACHER@M: size M; parts /seedN, /humanP, /stepsN, /lrX: that run with student seed N, P% human grades in
    # its targets, at least N steps, learning rate X; teacher-soft's are variants of the scaling curve's runs,
    # named as them: see pipelines/experiment_plan.py, _distilled_from)
    experiments: dict = field(default_factory=dict)

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
        experiments={"multiples": [0, 1, 2], "seeds": [13, 14], "ensemble_size": 2, "born_again": [0, 2],
                     "teacher_ablations": {"lr1e-3": {"learning_rate": 1e-3}}, "ensemble_recipes": ["lr1e-3"],
                     "mixed_ensembles": {"mixed": ["teacher-soft", "teacher-soft-lr1e-3"]},
                     "distil_teachers": ["teacher-soft-lr1e-3"]},
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
        name="reduced", description="Home Depot subset: the experiment plan on a 2-core CPU in under 2 hours",
        # Sized from measured costs on 2 CPU cores (docs/bench/throughput-cpu.md): the teacher trains at
        # ~2.6 pairs/s and labels ~11 pairs/s, the student trains ~40 pairs/s. 420 queries give ~1,500
        # training, ~150 validation and ~1,000 test pairs; the catalogue is every product in the file.
        # The teacher's head starts from the LM's rows for "Low"/"Medium"/"High" (head_init='verbaliser'):
        # with a random head the 135M teacher stayed at chance on these 1,374 pairs for 1 to 3 epochs
        # (tests/benchmarks/probe_teacher.py, docs/results/reduced-probes.md); from the verbaliser it learns in
        # 2 epochs.
        prepare={"max_queries": 420, "val_fraction": 0.06, "test_fraction": 0.38},
        teacher={"epochs": 2.0, "batch_size": 16, "max_length": 96, "learning_rate": 5e-5,
                 "head_init": "verbaliser"},
        augment={"multiple": 2.0},
        label={"batch_size": 64, "num_shards": 2},
        # min_steps 150: ~7 epochs of the 1,374 human-labelled pairs, so the small sets (human labels, 0x,
        # 2x) are not trained for fewer steps than the 8x set's 386.
        student={"epochs": 2.0, "batch_size": 32, "max_length": 64, "learning_rate": 1e-4, "min_steps": 150},
        evaluate={"batch_size": 64},
        # A second seed only for the cheap students (human labels, 0x): repeating 8x costs ~25 more minutes.
        experiments={"multiples": [0, 2, 4, 8], "seeds": [13, 14], "seed_multiples": [0]},
    ),
    "full": Profile(
        name="full", description="all Home Depot data on one GPU",
        # `kdrank run --profile full` took 521 s end to end on one H200 (docs/results.md), 239 s of it the
        # teacher; `--set teacher.batch_size=256 --set teacher.learning_rate=1e-4` trains that 3.7x faster
        # and ranked as well, but its students are unmeasured, so the reference recipe stays the default.
        # The experiment plan adds seeds, 16x and a 3-teacher ensemble.
        prepare={"val_fraction": 0.1, "test_fraction": 0.2},
        teacher={"epochs": 2.0, "batch_size": 64, "max_length": 96, "learning_rate": 5e-5},
        augment={"multiple": 8.0},
        label={"batch_size": 512, "num_shards": 4},
        # min_steps 480: 3 epochs of the ~41k training pairs (the human-label and 0x students), as the
        # reference human-label student had; the augmented sets reach more steps in their one epoch.
        student={"epochs": 1.0, "batch_size": 128, "max_length": 64, "learning_rate": 1e-4, "min_steps": 480},
        evaluate={"batch_size": 512},
        # teacher-soft-verbaliser: the reduced profile's head (the LM's rows for " Low"/" Medium"/" High")
        # against the reference recipe's random head, at full data (docs/results/reduced-probes.md).
        # teacher-soft-batch256: on one H200 the GPU was busy 21% of a batch-64 teacher step (the host's
        # kernel launches set its time). Measured: 155 ms per step against 144 ms, 3.7x the pairs/s, the
        # same test ranking (0.608 against 0.609 pairwise; lr 1e-4 for the 4x fewer, larger steps).
        # born_again: the 0x run's recipe on the human-label student's scores, per seed (no LLM: the control of
        # what the LLM's labels add; docs/results.md), and the 2x and 4x runs', per seed too (the first seed's
        # human-label student is every seed's teacher): do augmented pairs help when the teacher is a model of
        # the student's own size (on 2 CPU cores in bf16 about 25 and 40 minutes once the human-label student,
        # 19 minutes, and the 16x set's pairs, 2 minutes, are made)?
        # The reduced plan leaves them out, to stay under 2 hours.
        # ensemble_recipes: the ensemble again from three batch-256 teachers (teacher-ensemble-batch256), which
        # one GPU session trains and scores in about 180 s and labels 16x for in about 300 s more, against the
        # reference ensemble's 420 s and 200 s for its two new members (teacher-soft's labels are archived).
        # And from three verbaliser teachers (teacher-ensemble-verbaliser): the strongest single recipe so far,
        # whose members double as its seed spread; a 2-hour CPU run each in bf16, so CPU sessions can add them.
        # mixed256: three batch-256 teachers of different recipes (the reference head; the verbaliser head;
        # 3 epochs), each a stronger-teacher candidate of step 6 (a better head, longer training), composed
        # as one ensemble in the same GPU time as the seed ensemble. Averaging two models of one recipe
        # gained at most +0.004 pairwise accuracy over the better one on the full test set
        # (docs/results/ensemble-probe-full.md), so seeds alone are unlikely to make a stronger teacher.
        # distil_teachers: each candidate's own 16x student; `gpu_run.sh best=teacher-ensemble-mixed256` runs
        # the ensemble's and the one of the member with the lowest validation loss.
        # teacher-soft-verbaliser (batch 64), trained on the CPU on 2026-12-05, is the strongest teacher so far
        # (seeds 13 and 14: 0.625 and 0.615 against teacher-soft's 0.609, docs/results.md): its 16x student,
        # and its 0x one, which a CPU session can make (TEACHER@M distils at size M), with a second seed
        # (TEACHER@M/seedN), which needs no teacher on the CPU: its labels of the training pairs are archived.
        # teacher-soft-verbaliser-seed15 (0.620), trained on the CPU on 2026-12-06: its 0x and 2x students with
        # two seeds, the LLM's 2x point made on the CPU (a size below the largest labels only its own pairs,
        # unless the largest set's labels are there), and its 4x point (labelling only the pairs after the 2x
        # set's, since that set is there), and its 8x point (after the 4x set's pairs).
        # mixed3: the three LLM teachers whose labels of the training pairs are archived (the reference head,
        # the verbaliser head with seeds 13 and 15), composed as one ensemble; its 0x students (two seeds) need
        # no teacher on any CPU: does a teacher ensemble's labels make a better student than one teacher's?
        # And the same 0x students with half of each training pair's target from its human grade (`/human50`):
        # the ground truth mixed into the teacher's labels, as distillation recipes usually do. And a 0x student
        # trained for the 814 steps the verbaliser teacher's 4x students took (one epoch of 4x against 3 of 0x,
        # 480 steps): is the curve's rise its new pairs, or its extra steps? And the same question where the
        # curve rose most: 0x students of teacher-soft-verbaliser-seed15 trained for the 1,456 steps its 8x
        # students took (two seeds; its labels of the training pairs are archived, so any CPU can run them).
        # And `@0/steps480` (and /seed14): the same teacher's 0x students at the profile's own 480 steps, the
        # 0x run's recipe exactly, under a name of its own so that the Intel Xeon's archived rows stay: made
        # on the machine that made the 1,456-step ones, they pair the steps comparison on one CPU, and
        # measure what the CPU alone moves a row by (the same seed, labels and precision on another CPU).
        # And `@0/human30` (and /seed14): 30% of each training pair's target from its human grade, the share at
        # which the grades and this teacher's labels weigh alike in the margins (standard deviations of the
        # same-query training margins 0.61 and 0.26: 0.26 / 0.87 = 0.30); 50% let the grades drown the labels.
        # And `@0/human10` (and /seed14): the small share of the true labels that distillation recipes often
        # use beside the teacher's targets (30% cost the students 0.001 and 0.007).
        # And `@0/lr2e-4`, `@0/lr5e-5` (and /seed14): the student's learning rate doubled and halved around the
        # profile's 1e-4, which came from the reference recipe and was never tuned at full size: is the
        # student's own recipe, not the teacher, what holds the 0x students at 0.625? And `@0/lr4e-4` (and
        # /seed14): 2e-4 scored 0.626 against 0.624 (seed 13), so the rate doubled again, to find the turn.
        experiments={"multiples": [0, 2, 4, 8, 16], "seeds": [13, 14], "ensemble_size": 3, "born_again": [0, 2, 4],
                     "born_again_seed_multiples": [0, 2, 4],
                     "teacher_ablations": {"verbaliser": {"head_init": "verbaliser"},
                                           "batch256": {"batch_size": 256, "learning_rate": 1e-4},
                                           "batch256-verbaliser": {"batch_size": 256, "learning_rate": 1e-4,
                                                                   "head_init": "verbaliser"},
                                           "batch256-epochs3": {"batch_size": 256, "learning_rate": 1e-4,
                                                                "epochs": 3.0}},
                     "ensemble_recipes": ["batch256", "verbaliser"],
                     "mixed_ensembles": {"mixed256": ["teacher-soft-batch256", "teacher-soft-batch256-verbaliser",
                                                      "teacher-soft-batch256-epochs3"],
                                         "mixed3": ["teacher-soft", "teacher-soft-verbaliser",
                                                    "teacher-soft-verbaliser-seed15"]},
                     "distil_teachers": ["teacher-soft-batch256", "teacher-soft-batch256-verbaliser",
                                         "teacher-soft-batch256-epochs3", "teacher-soft-verbaliser",
                                         "teacher-soft-verbaliser@0", "teacher-soft-verbaliser@0/seed14",
                                         "teacher-soft-verbaliser-seed15@0", "teacher-soft-verbaliser-seed15@2",
                                         "teacher-soft-verbaliser-seed15@0/seed14",
                                         "teacher-soft-verbaliser-seed15@2/seed14",
                                         "teacher-soft-verbaliser-seed15@4",
                                         "teacher-soft-verbaliser-seed15@4/seed14",
                                         "teacher-soft-verbaliser-seed15@8",
                                         "teacher-soft-verbaliser-seed15@8/seed14",
                                         "teacher-ensemble-mixed3@0", "teacher-ensemble-mixed3@0/seed14",
                                         "teacher-ensemble-mixed3@0/human50",
                                         "teacher-ensemble-mixed3@0/human50/seed14",
                                         "teacher-ensemble-mixed3@0/steps814",
                                         "teacher-soft-verbaliser-seed15@0/steps1456",
                                         "teacher-soft-verbaliser-seed15@0/steps1456/seed14",
                                         "teacher-soft-verbaliser-seed15@0/steps480",
                                         "teacher-soft-verbaliser-seed15@0/steps480/seed14",
                                         "teacher-soft-verbaliser-seed15@0/human30",
                                         "teacher-soft-verbaliser-seed15@0/human30/seed14",
                                         "teacher-soft-verbaliser-seed15@0/human10",
                                         "teacher-soft-verbaliser-seed15@0/human10/seed14",
                                         "teacher-soft-verbaliser-seed15@0/lr2e-4",
                                         "teacher-soft-verbaliser-seed15@0/lr5e-5",
                                         "teacher-soft-verbaliser-seed15@0/lr2e-4/seed14",
                                         "teacher-soft-verbaliser-seed15@0/lr5e-5/seed14",
                                         "teacher-soft-verbaliser-seed15@0/lr4e-4",
                                         "teacher-soft-verbaliser-seed15@0/lr4e-4/seed14"]},
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile '{name}'; choose one of {sorted(PROFILES)}") from None
