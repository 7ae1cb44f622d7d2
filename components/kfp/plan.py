"""First step of the training pipeline: check every run parameter, then plan the labelling shards.

Bad parameters (unknown profile, a setting a step does not have, a shard count below one, an input
that does not exist) fail here, before any training, with a message naming the parameter.
"""

import inspect
from typing import List  # noqa: UP035 (KFP reads the annotation of the embedded source)

from components.kfp.common import kdrank_component

MAX_SHARDS = 1024


def check_profile(profile) -> None:
    """Build every step's config from the profile, so a bad setting fails now, not hours later."""
    from components.augment import AugmentConfig
    from components.data import PrepareConfig
    from components.evaluate import evaluate_checkpoint
    from components.label import label_shard
    from components.student import StudentConfig
    from components.synthetic import SyntheticConfig
    from components.teacher import TeacherConfig

    if "fmt" in profile.prepare:  # the data step passes the run's data_format as fmt itself
        raise ValueError(f"profile '{profile.name}', step 'prepare': setting 'fmt' is not a step setting; give "
                         "the format of the data with --format (the data_format parameter)")
    for step, build in (("synthetic", SyntheticConfig), ("prepare", PrepareConfig),
                        ("teacher", TeacherConfig), ("augment", AugmentConfig), ("student", StudentConfig)):
        try:
            _check_types(build, getattr(profile, step))
            config = build(**getattr(profile, step))
            if hasattr(config, "validate"):
                config.validate()
        except (TypeError, ValueError) as err:
            raise ValueError(f"profile '{profile.name}', step '{step}': {err}") from err
    # label and evaluate take keyword arguments of the engine function, less those the step sets itself
    for step, func, own, taken in (("label", label_shard, {"num_shards"}, set()),
                                   ("evaluate", evaluate_checkpoint, set(), {"name"})):
        keywords = {name for name, p in inspect.signature(func).parameters.items() if p.kind == p.KEYWORD_ONLY}
        unknown = sorted(set(getattr(profile, step)) - ((keywords - taken) | own))
        if unknown:
            raise ValueError(f"profile '{profile.name}', step '{step}': unknown setting(s) {unknown}")
        try:
            _check_types(func, {k: v for k, v in getattr(profile, step).items() if k not in own})
            _check_engine_values(getattr(profile, step))
        except ValueError as err:
            raise ValueError(f"profile '{profile.name}', step '{step}': {err}") from err


DEVICE_TYPES = ("cpu", "cuda", "mps")


def _check_engine_values(settings: dict) -> None:
    """The ranges `label_shard` and `evaluate_checkpoint` hold their keyword arguments to, checked now
    rather than in a labelling pod (which is retried) or after training: sizes, device, format, shards."""
    from components.data import FORMATS

    for name in ("batch_size", "chunk_rows"):
        if name in settings and settings[name] < 1:
            raise ValueError(f"setting '{name}' must be >= 1, got {settings[name]}")
    if "num_shards" in settings:
        try:
            check_num_shards(settings["num_shards"])
        except ValueError as err:
            raise ValueError(f"setting 'num_shards': {err}") from err
    if settings.get("device"):
        import torch

        device = settings["device"]
        try:
            kind = torch.device(device).type
        except RuntimeError:
            kind = None
        if kind not in DEVICE_TYPES:
            raise ValueError(f"setting 'device' must be one of {list(DEVICE_TYPES)}, optionally with an index "
                             f"(e.g. cuda:1), or empty (GPU when present), got {device!r}")
    if settings.get("fmt") and settings["fmt"] not in FORMATS:
        raise ValueError(f"setting 'fmt' must be one of {list(FORMATS)} or empty (from the name), "
                         f"got {settings['fmt']!r}")


def _check_types(config_class, settings: dict) -> None:
    """Refuse a setting whose value is not of its config field's (or function argument's) plain type
    (int, float, bool, str).

    A `--set teacher.learning_rate=...` that arrives as a string would otherwise fail deep inside the
    config's checks with a message that names no setting. Other annotations (lists, unions) pass.
    """
    import types
    import typing

    hints = typing.get_type_hints(config_class)
    for name, value in settings.items():
        hint = hints.get(name)
        if hint is None:
            continue  # an unknown setting: the config itself names it
        args = typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            if value is None and type(None) in args:
                continue
            plain = [a for a in args if a is not type(None)]
            hint = plain[0] if len(plain) == 1 else None
        if hint is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif hint in (bool, str):
            ok = isinstance(value, hint)
        else:
            continue
        if not ok:
            raise ValueError(f"setting '{name}' must be {'a number' if hint is float else hint.__name__}, "
                             f"got {value!r} ({type(value).__name__})")


def check_num_shards(num_shards: int) -> list[int]:
    """The shard indices 0..num_shards-1 of the labelling fan-out."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int):
        raise ValueError(f"num_shards must be an integer, got {num_shards!r}")
    if not 1 <= num_shards <= MAX_SHARDS:
        raise ValueError(f"num_shards must be between 1 and {MAX_SHARDS}, got {num_shards}")
    return list(range(num_shards))


def check_inputs(data_uri: str = "", teacher_base: str = "", student_base: str = "", data_format: str = "") -> None:
    """Every given input exists (local path or gs:// URI; empty means the packaged default), in a known format."""
    from components import storage
    from components.data import FORMATS

    if data_format and data_format not in FORMATS:
        raise ValueError(f"data_format must be one of {list(FORMATS)} or empty (from the name), got '{data_format}'")

    for name, uri, marker in (("data_uri", data_uri, None), ("teacher_base", teacher_base, "config.json"),
                              ("student_base", student_base, "config.json")):
        if not uri:
            continue
        target = storage.join(uri, marker) if marker else uri
        found = storage.exists(target)
        if not found and storage.is_gcs(uri) and not marker:  # a gs:// prefix of Parquet shards
            found = bool(storage.list_files(uri))
        if not found:
            what = "a model directory with config.json" if marker else "an existing file or folder"
            raise FileNotFoundError(f"{name}: '{uri}' is not {what}")


def plan_run(profile: str, num_shards: int, data_uri: str = "", teacher_base: str = "",
             student_base: str = "", overrides: dict | None = None, data_format: str = "") -> list[int]:
    """Check all run parameters (`overrides`: step -> settings); the shard indices to fan labelling out over."""
    from components.kfp.common import resolve_profile

    shards = check_num_shards(num_shards)
    check_profile(resolve_profile(profile, teacher_base, student_base, overrides))
    check_inputs(data_uri, teacher_base, student_base, data_format)
    return shards


@kdrank_component
def plan(
    profile: str,
    num_shards: int,
    data_uri: str = "",
    data_format: str = "",
    teacher_base: str = "",
    student_base: str = "",
    synthetic_settings: dict = {},  # noqa: B006 (KFP needs a literal default for an optional dict parameter)
    prepare_settings: dict = {},  # noqa: B006
    teacher_settings: dict = {},  # noqa: B006
    augment_settings: dict = {},  # noqa: B006
    label_settings: dict = {},  # noqa: B006
    student_settings: dict = {},  # noqa: B006
    evaluate_settings: dict = {},  # noqa: B006
) -> List[int]:  # noqa: UP006
    """Check the run parameters (profile, step settings, shard count, inputs); return the shard indices."""
    from components.kfp.common import start_step
    from components.kfp.plan import plan_run

    start_step("plan")
    overrides = {"synthetic": synthetic_settings, "prepare": prepare_settings, "teacher": teacher_settings,
                 "augment": augment_settings, "label": label_settings, "student": student_settings,
                 "evaluate": evaluate_settings}
    return plan_run(profile, num_shards, data_uri, teacher_base, student_base, overrides, data_format)
