"""What every kdrank component shares: the image, the decorator, profile resolution and artifact adapters.

Components are lightweight Python components whose source is embedded in the compiled YAML; their
bodies import the installed `components` package, so the image must hold kdrank and the KFP SDK
(`install_kfp_package=False`: nothing is pip-installed when a pod starts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from kfp import dsl

DEFAULT_IMAGE = "kdrank:0.1.0"
IMAGE_ENV = "KDRANK_IMAGE"
# A Kubernetes secret holding a service-account JSON key reaches the pod as this variable (kfp-kubernetes
# `use_secret_as_env`); `start_step` writes it to a private file for the google-cloud-storage client.
CREDENTIALS_ENV = "KDRANK_GCS_CREDENTIALS_JSON"
STEPS = ("synthetic", "prepare", "teacher", "augment", "label", "student", "evaluate")  # settings per step

log = logging.getLogger(__name__)


def resolve_image(image: str | None = None) -> str:
    """`image`, else $KDRANK_IMAGE, else the default tag the Dockerfile's docs build."""
    chosen = image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    if any(c.isspace() for c in chosen) or chosen.startswith(("-", ":")):
        raise ValueError(f"not a container image reference: '{chosen}'")
    return chosen


def kdrank_component(func: Callable):
    """Decorate a step function as a KFP lightweight component in the kdrank image.

    Inside a running step the SDK loads in runtime mode, without the decorator; there a step module is
    imported only for its plain functions, so the function is returned as it is.
    """
    decorator = getattr(dsl, "component", None)
    if decorator is None:
        return func
    return decorator(func, base_image=resolve_image(), install_kfp_package=False)


def with_image(component, image: str):
    """The same component built for another image (the image is a compile-time setting)."""
    return dsl.component(component.python_func, base_image=resolve_image(image), install_kfp_package=False)


STATE_ROOT = "KDRANK_STATE_ROOT"  # set by `kdrank run`: one state folder per output, the same in every run


def state_location(artifact) -> str:
    """Where a training step keeps the state of training cut short (components.resume).

    Under $KDRANK_STATE_ROOT, by the artifact's name, where that is set: `kdrank run` sets it to a folder of
    its output, because kfp.local gives every run new artifact paths, so that a step cut short goes on in
    the next run of the same command (the state's identity keeps other training from taking it). Else under
    its output artifact's gs:// URI, which the driver gives every retry of the task, so a retried pod (a
    preempted node, `ClusterSettings.train_retries`) goes on from it; else beside the artifact's local path
    (a pipeline root on other storage, where only a rerun on the same disk finds it)."""
    if root := os.environ.get(STATE_ROOT, ""):
        from components import storage

        return storage.join(root, artifact.name)
    uri = str(getattr(artifact, "uri", "") or "")
    if uri.startswith("gs://"):
        return uri.rstrip("/") + ".state"
    return str(artifact.path).rstrip("/") + ".state"


def start_step(name: str) -> None:
    """Per-pod set-up: logging, and GCS credentials from the secret-backed variable when present."""
    if not logging.getLogger().handlers:  # a pod; leave a host's (pytest's, a CLI's) logging alone
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    key = os.environ.get(CREDENTIALS_ENV)
    if key and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        try:
            json.loads(key)
        except json.JSONDecodeError as err:
            raise ValueError(f"${CREDENTIALS_ENV} does not hold a JSON service-account key: {err}") from err
        fd, path = tempfile.mkstemp(prefix="gcs-key-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = path
    log.info("kdrank step '%s' starting", name)


@contextlib.contextmanager
def exit_on_stop() -> Iterator[None]:
    """Around a training step's work: stopped by SIGTERM or Ctrl-C with its state saved (`TrainingInterrupted`),
    the step logs that in one line and exits with 128 + the signal's number, as a process the signal killed
    would, in place of a traceback. The task fails all the same; its retry, or the next `kdrank run`, resumes."""
    from components.resume import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted as err:
        log.warning("%s", err)
        raise SystemExit(128 + err.signum) from None


def resolve_profile(profile: str, teacher_base: str = "", student_base: str = "",
                    overrides: dict | None = None):
    """The run profile with the base models and per-step overrides ({"teacher": {"epochs": 2}}) applied."""
    from components.flow import get_profile

    chosen = get_profile(profile).with_models(teacher_base or None, student_base or None)
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a mapping of step -> settings, got {type(overrides).__name__}")
    unknown = sorted(set(overrides) - set(STEPS))
    if unknown:
        raise ValueError(f"overrides for unknown step(s) {unknown}; steps are {list(STEPS)}")
    changes = {}
    for step, settings in overrides.items():
        if not isinstance(settings, dict):
            raise ValueError(f"overrides['{step}'] must be a mapping of setting -> value, got {settings!r}")
        changes[step] = {**getattr(chosen, step), **{k: _from_struct(v, getattr(chosen, step).get(k))
                                                     for k, v in settings.items()}}
    return dataclasses.replace(chosen, **changes)


def _from_struct(value, current):
    """Pipeline dict parameters travel as protobuf Structs, where 2 becomes 2.0: give integers back."""
    if isinstance(value, float) and value.is_integer() and not isinstance(current, float):
        return int(value)
    return value


def metric_name(key: str) -> str:
    """A metric key the Kubeflow UI shows cleanly: 'ndcg@10' -> 'ndcg_at_10'."""
    return key.replace("@", "_at_").replace(" ", "_").replace(".", "_")


def log_metrics(artifact, metrics: dict, prefix: str = "") -> dict:
    """`log_metric` every finite number of `metrics` on a KFP Metrics artifact; returns what was logged."""
    logged = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        name = metric_name(f"{prefix}{key}")
        artifact.log_metric(name, float(value))
        logged[name] = float(value)
    return logged


def scalar_metadata(summary: dict) -> dict:
    """The JSON scalars of a step summary, for an artifact's metadata (lists and dicts are left out)."""
    return {k: v for k, v in summary.items()
            if isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v))}


def json_safe(value):
    """`value` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, payload: dict) -> None:
    """A small strict-JSON file (also at a Metrics artifact's path, so file-backed caches see it exists)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True, default=str,
                                     allow_nan=False) + "\n")
