"""Run the training pipeline on this machine: compile it, then execute that compiled YAML with kfp.local.

Every step runs as a subprocess of this Python environment (SubprocessRunner without a venv per task),
exactly the component code a cluster runs. Finished steps are cached under the output folder, so a
failed or repeated run redoes only what did not finish (labelling shards included), and the teacher and
student steps keep the state of training cut short in one folder there (`STATE_DIR`), so the next run goes
on from its last save (every KDRANK_STATE_EVERY seconds, 600 by default; components/resume.py). A first
Ctrl-C or SIGTERM lets the running step save its state before the run stops (pipelines/stopping.py). This is
what `kdrank run` and `kdrank pipeline run --local` both call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

from components import storage
from components.resume import TrainingInterrupted
from pipelines.stopping import StepStopper, stopped

log = logging.getLogger(__name__)

PIPELINE_FILE = "distill.yaml"
PENDING_FILE = "distill.pending.yaml"  # the YAML of a run under way; it becomes PIPELINE_FILE when the run succeeds
ROOT_DIR = "pipeline-root"
SUMMARY_FILE = "run.json"
STATE_DIR = ".training-state"  # under ROOT_DIR: the teacher's and student's state of training cut short
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _step_environment(state_root: Path | None = None) -> Iterator[None]:
    """Environment the step subprocesses inherit: this project importable, no model-hub access, training
    state kept under `state_root` (a folder of the output, the same in every run: kfp.local gives each run
    new artifact paths, so a training step cut short goes on from its last save in the next run), and
    tokenizers free to use every core (the default of a step's container on a cluster). Each step is
    its own process and forks nothing after tokenising. The label and teacher steps tokenise every
    prompt of their pairs (hundreds of thousands in the full profile); single-threaded, the student
    step's tokenising of 372k pairs took 59 s on a 16-core GPU machine (docs/results.md)."""
    from components.kfp.common import STATE_ROOT

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", STATE_ROOT)}
    paths = [str(PROJECT_ROOT), *filter(None, (saved["PYTHONPATH"] or "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if state_root is not None:
        os.environ[STATE_ROOT] = str(state_root)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _artifact_paths(outputs: dict, order: tuple[str, ...]) -> dict[str, str | list[str]]:
    """Pipeline outputs (artifacts, or lists of them) as local paths, in pipeline order."""
    def path(artifact) -> str:
        return artifact.path if hasattr(artifact, "path") else str(artifact)

    names = [n for n in order if n in outputs] + sorted(set(outputs) - set(order))
    return {name: [path(a) for a in outputs[name]] if isinstance(outputs[name], list) else path(outputs[name])
            for name in names}


def _link(target: str, link: Path) -> None:
    """`link` -> `target`, replacing an old link (the stable names a user types: runs/latest/student)."""
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not a link; choose another output folder")
    link.symlink_to(target)


def publish(output_dir: str, artifacts: dict[str, str | list[str]]) -> None:
    """Stable links under `output_dir` to each artifact (`labels/shard-N` for the shards)."""
    for name, target in artifacts.items():
        if isinstance(target, list):
            folder = Path(output_dir, name)
            folder.mkdir(exist_ok=True)
            for old in folder.iterdir():
                if old.is_symlink():
                    old.unlink()
            for index, shard in enumerate(target):
                _link(shard, folder / f"shard-{index}")
        else:
            _link(target, Path(output_dir, name))


def check_publishable(output_dir: str, names: tuple[str, ...], lists: dict[str, int]) -> None:
    """Refuse now what would stop `publish` after the run: a folder (not a link) where an artifact's link
    goes, or a file where a folder of links goes (`lists`: name -> number of links in it)."""
    def blocked(path: Path) -> bool:
        return not path.is_symlink() and path.exists() and not path.is_file()

    for name in names:
        path = Path(output_dir, name)
        if name in lists:
            if (path.exists() or path.is_symlink()) and not path.is_dir():
                raise FileExistsError(f"{path} exists and is not a folder; the run links its '{name}' there: "
                                      "move it away or choose another output folder")
            found = [path / f"shard-{i}" for i in range(lists[name]) if blocked(path / f"shard-{i}")]
        else:
            found = [path] if blocked(path) else []
        if found:
            raise FileExistsError(f"{found[0]} exists and is not a link; the run links its artifact there: "
                                  "move it away or choose another output folder")


def run_local(output_dir: str = "runs/latest", profile: str = "demo", data_uri: str | None = None,
              data_format: str | None = None, teacher_model: str | None = None,
              student_model: str | None = None, *, num_shards: int | None = None,
              overrides: dict | None = None, model_name: str | None = None, repository_uri: str | None = None,
              cache: bool = True, image: str | None = None, quiet: bool = False) -> dict:
    """Compile the training pipeline into `output_dir` and run that YAML locally; print where it all landed.

    `data_uri` None = the embedded synthetic data; models None = the packaged defaults; both may be
    gs:// URIs. `overrides` maps a step to config settings ({"teacher": {"epochs": 2}}). Returns
    {"pipeline", "output", "artifacts", "metrics", "table"}; raises on a failed step.
    """
    from components.kfp.plan import check_inputs
    from pipelines.settings import ClusterSettings
    from pipelines.training import RunDefaults, TrainingOutputs, compile_pipeline

    if storage.is_gcs(output_dir):
        raise ValueError(f"local runs write to a local folder, not {output_dir}; to keep artifacts on GCS, "
                         "submit to Kubeflow with a gs:// pipeline root (kdrank pipeline submit)")
    output = Path(output_dir).expanduser().resolve()
    defaults = RunDefaults(profile=profile, num_shards=num_shards, data_uri=data_uri or "",
                           data_format=data_format or "", teacher_base=teacher_model or "",
                           student_base=student_model or "", repository_uri=repository_uri or "",
                           overrides=dict(overrides or {}),
                           **({"model_name": model_name} if model_name else {})).resolved()
    check_inputs(defaults.data_uri, defaults.teacher_base, defaults.student_base, defaults.data_format)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"output folder {output} is a file")
    check_publishable(str(output), TrainingOutputs._fields, {"labels": defaults.num_shards})
    output.mkdir(parents=True, exist_ok=True)
    # compiled under another name, moved into place once the run succeeded: a failed run leaves the last good
    # run's YAML, links and run.json together
    pending = output / PENDING_FILE
    try:
        return _run_compiled(compile_pipeline(str(pending), ClusterSettings(image=image), defaults), output,
                             defaults, cache, quiet)
    finally:
        pending.unlink(missing_ok=True)


def _run_compiled(pending: str, output: Path, defaults, cache: bool, quiet: bool) -> dict:
    """Run the compiled YAML `pending`; on success publish the links, the YAML and run.json in `output`."""
    from kfp import local
    from kfp.components import load_component_from_file

    from pipelines.training import PIPELINE_NAME, TrainingOutputs, run_arguments

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output / ROOT_DIR),
               enable_caching=cache, raise_on_error=True)
    pipeline = load_component_from_file(pending)
    log.info("running %s (profile %s, %d labelling shards) from %s", PIPELINE_NAME, defaults.profile,
             defaults.num_shards, pending)
    stopper = StepStopper()
    with _step_environment(output / ROOT_DIR / STATE_DIR), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")  # the kdrank image is Python
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")  # pod settings
        try:
            with stopper.installed():
                task = pipeline(**run_arguments(defaults))
        except BaseException as err:
            if stopped(stopper, err):
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(stopper.signum).name}: finished steps are cached under "
                    f"{output / ROOT_DIR}, and training cut short keeps its state in "
                    f"{output / ROOT_DIR / STATE_DIR}; run the same command again to go on from there",
                    stopper.signum) from None
            if not isinstance(err, RuntimeError):
                raise
            message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # kfp.local colours its messages
            raise RuntimeError(f"{message} Its log is above; run the same command again to resume: finished "
                               f"steps are cached under {output / ROOT_DIR}, and training cut short goes on "
                               "from its last save.") from err
    artifacts = _artifact_paths(task.outputs, TrainingOutputs._fields)
    metrics = json.loads(Path(artifacts["metrics"]).read_text())
    table = Path(artifacts["table"]).read_text()
    publish(str(output), artifacts)
    pipeline_file = str(output / PIPELINE_FILE)
    os.replace(pending, pipeline_file)
    result = {"pipeline": pipeline_file, "output": str(output), "artifacts": artifacts, "metrics": metrics,
              "table": table, "arguments": run_arguments(defaults)}  # the run's exact settings, overrides included
    storage.write_text(str(output / SUMMARY_FILE), json.dumps(result, indent=2, sort_keys=True) + "\n")
    if not quiet:
        print(report(result))
    return result


def report(result: dict) -> str:
    """Where every artifact landed, then the evaluation table: what a person reads after a run."""
    output = Path(result["output"])

    def where(path: str) -> str:
        return str(Path(path).relative_to(output)) if Path(path).is_relative_to(output) else path

    rows = []
    for name, target in result["artifacts"].items():
        if isinstance(target, list):
            rows += [(f"{name}/shard-{i}", where(path)) for i, path in enumerate(target)]
        else:
            rows.append((name, where(target)))
    width = max(len(name) for name, _ in rows) + 2
    lines = ["", f"Pipeline ran from {result['pipeline']}.",
             f"Artifacts, under {output} (each also linked there by its name):",
             *(f"  {name:<{width}}{path}" for name, path in rows)]
    return "\n".join([*lines, "", "Evaluation on the held-out test queries:", "", result["table"].rstrip()])
