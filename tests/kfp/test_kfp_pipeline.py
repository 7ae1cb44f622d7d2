"""Compiling the training pipeline: deterministic IR YAML a cluster accepts, with the cluster settings asked for."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.components import load_component_from_file
from kfp.pipeline_spec import pipeline_spec_pb2

from components.kfp.common import CREDENTIALS_ENV, DEFAULT_IMAGE, IMAGE_ENV, STEPS
from pipelines import commands
from pipelines.settings import ClusterSettings, Toleration
from pipelines.training import PIPELINE_NAME, RunDefaults, compile_pipeline

GPU_EXECUTORS = {"exec-train-teacher", "exec-label-shard", "exec-train-student"}
STEP_EXECUTORS = GPU_EXECUTORS | {"exec-plan", "exec-prepare-data", "exec-augment-pairs", "exec-evaluate",
                                  "exec-export-student", "exec-build-reference"}
PARAMETERS = {"profile", "num_shards", "data_uri", "data_format", "teacher_base", "student_base", "model_name",
              "repository_uri", *(f"{step}_settings" for step in STEPS)}
OUTPUTS = {"data", "teacher", "pairs", "labels", "student", "metrics", "table", "report", "repository", "reference"}


def documents(path) -> list[dict]:
    with open(path) as handle:
        return [d for d in yaml.safe_load_all(handle) if d]


def parse_strict(path) -> tuple[pipeline_spec_pb2.PipelineSpec, pipeline_spec_pb2.PlatformSpec | None]:
    """The YAML as the pipeline-spec protobufs; unknown fields are errors."""
    docs = documents(path)
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    platform = None
    if len(docs) > 1:
        platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
    return spec, platform


def executors(spec: pipeline_spec_pb2.PipelineSpec) -> dict[str, dict]:
    return {name: json_format.MessageToDict(e) for name, e in spec.deployment_spec.fields["executors"]
            .struct_value.fields.items()}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> str:
    return compile_pipeline(str(tmp_path_factory.mktemp("compiled") / "distill.yaml"))


def test_compiling_twice_gives_identical_bytes(tmp_path, compiled):
    again = compile_pipeline(str(tmp_path / "again.yaml"))
    with open(compiled, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_yaml_parses_strictly_into_the_pipeline_spec(compiled):
    spec, _ = parse_strict(compiled)
    assert spec.pipeline_info.name == PIPELINE_NAME
    assert set(executors(spec)) == STEP_EXECUTORS
    params = spec.root.input_definitions.parameters
    assert set(params) == PARAMETERS
    assert params["profile"].default_value.string_value == "demo"
    assert params["num_shards"].default_value.number_value == 2


def test_strict_parse_rejects_a_foreign_field(tmp_path, compiled):
    docs = documents(compiled)
    docs[0]["pipelineInfo"]["colour"] = "blue"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(json_format.ParseError, match="colour"):
        parse_strict(bad)


def test_yaml_loads_back_as_a_component(compiled):
    pipeline = load_component_from_file(compiled)
    assert pipeline.name == PIPELINE_NAME
    assert set(pipeline.component_spec.inputs) == PARAMETERS
    assert set(pipeline.component_spec.outputs) == OUTPUTS


def test_steps_run_the_image_without_installing_anything(compiled):
    spec, _ = parse_strict(compiled)
    for name, executor in executors(spec).items():
        container = executor["container"]
        assert container["image"] == DEFAULT_IMAGE, name
        script = " ".join(container["command"])
        assert "pip install" not in script, name
        assert "kfp.dsl.executor_main" in script


def test_labelling_fans_out_over_the_planned_shards(compiled):
    spec, _ = parse_strict(compiled)
    loop = next(t for t in spec.root.dag.tasks.values() if t.WhichOneof("iterator") == "parameter_iterator")
    assert loop.parameter_iterator.items.input_parameter == "pipelinechannel--plan-Output"
    body = spec.components[loop.component_ref.name].dag.tasks["label-shard"]
    assert body.retry_policy.max_retry_count == 2
    for name in ("train-teacher", "train-student"):  # a retried pod resumes from the saved training state
        assert spec.root.dag.tasks[name].retry_policy.max_retry_count == 2, name
    student = spec.root.dag.tasks["train-student"]
    assert "for-loop-1" in student.dependent_tasks  # the collected shards feed the student


def test_gpu_steps_request_accelerators_and_every_step_requests_cpu_and_memory(compiled):
    spec, _ = parse_strict(compiled)
    for name, executor in executors(spec).items():
        resources = executor["container"]["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"], name
        if name in GPU_EXECUTORS:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
        else:
            assert "accelerator" not in resources, name


def test_training_retries_can_be_turned_off_and_not_made_negative(tmp_path):
    spec, _ = parse_strict(compile_pipeline(str(tmp_path / "once.yaml"), ClusterSettings(train_retries=0)))
    assert not spec.root.dag.tasks["train-teacher"].HasField("retry_policy")
    with pytest.raises(ValueError, match="train_retries must be >= 0, got -1"):
        ClusterSettings(train_retries=-1)


def test_cpu_flag_drops_accelerators(tmp_path):
    path = compile_pipeline(str(tmp_path / "cpu.yaml"), ClusterSettings(gpu=False))
    spec, _ = parse_strict(path)
    assert not any("accelerator" in e["container"]["resources"] for e in executors(spec).values())


def test_placement_and_secrets_reach_the_platform_spec(tmp_path):
    settings = ClusterSettings(
        image="europe-docker.pkg.dev/proj/kdrank/kdrank:1.2", accelerator_type="nvidia.com/gpu",
        accelerator_count=2, node_selector=(("cloud.google.com/gke-accelerator", "nvidia-l4"),),
        tolerations=(Toleration.parse("nvidia.com/gpu=present:NoSchedule"),), gcs_secret="gcs-key")
    path = compile_pipeline(str(tmp_path / "placed.yaml"), settings, pipeline_root="gs://bucket/kdrank")
    spec, platform = parse_strict(path)
    assert spec.default_pipeline_root == "gs://bucket/kdrank"
    assert {e["container"]["image"] for e in executors(spec).values()} == {settings.image}
    configs = json_format.MessageToDict(platform)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(configs) == STEP_EXECUTORS  # every step gets the secret
    for name, cfg in configs.items():
        env = cfg["secretAsEnv"][0]["keyToEnv"][0]
        assert env == {"secretKey": "key.json", "envVar": CREDENTIALS_ENV}
        if name in GPU_EXECUTORS:
            assert cfg["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert cfg["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                           "effect": "NoSchedule"}]
        else:
            assert "nodeSelector" not in cfg and "tolerations" not in cfg
    counts = {e["container"]["resources"].get("accelerator", {}).get("resourceCount") for n, e in
              executors(spec).items() if n in GPU_EXECUTORS}
    assert counts == {"2"}


def test_image_comes_from_the_environment_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv(IMAGE_ENV, "registry.example/kdrank:test")
    spec, _ = parse_strict(compile_pipeline(str(tmp_path / "env.yaml"), ClusterSettings()))
    assert {e["container"]["image"] for e in executors(spec).values()} == {"registry.example/kdrank:test"}


@pytest.mark.parametrize(("defaults", "message"), [
    (RunDefaults(profile="huge"), "unknown profile 'huge'"),
    (RunDefaults(num_shards=-1), "num_shards must be between 1 and"),
    (RunDefaults(overrides={"student": {"loss": "hinge"}}), "StudentConfig.loss"),
    (RunDefaults(overrides={"teacher": {"learning_rate": "fast"}}),
     "step 'teacher': setting 'learning_rate' must be a number, got 'fast'"),
    (RunDefaults(overrides={"student": {"batch_size": 12.5}}), "setting 'batch_size' must be int, got 12.5"),
    (RunDefaults(overrides={"label": {"batch_size": "abc"}}), "step 'label': setting 'batch_size' must be int"),
    (RunDefaults(overrides={"label": {"device": "tpu"}}), "step 'label': setting 'device' must be one of"),
    (RunDefaults(overrides={"evaluate": {"batch_size": 0}}), "step 'evaluate': setting 'batch_size' must be >= 1"),
    (RunDefaults(overrides={"prepare": {"fmt": "csv"}}), "step 'prepare': setting 'fmt'.*--format"),
])
def test_bad_defaults_fail_at_compile_time(tmp_path, defaults, message):
    with pytest.raises(ValueError, match=message):
        compile_pipeline(str(tmp_path / "bad.yaml"), defaults=defaults)
    assert not (tmp_path / "bad.yaml").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("nvidia.com/gpu=present", "KEY\\[=VALUE\\]:EFFECT"),
    ("nvidia.com/gpu:Sometimes", "effect must be one of"),
])
def test_bad_tolerations_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        Toleration.parse(text)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="kdrank")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def test_cli_compiles_with_flags(tmp_path, capsys):
    out = tmp_path / "distill.yaml"
    assert cli("pipeline", "compile", "--output", str(out), "--cpu", "--image", "kdrank:dev", "--profile", "test",
               "--shards", "3", "--set", "teacher.epochs=2", "--set", "label.batch_size=16") == 0
    assert str(out) in capsys.readouterr().out
    spec, _ = parse_strict(out)
    params = json_format.MessageToDict(spec.root.input_definitions)["parameters"]
    assert params["num_shards"]["defaultValue"] == 3
    assert params["profile"]["defaultValue"] == "test"
    assert params["teacher_settings"]["defaultValue"] == {"epochs": 2}
    assert params["label_settings"]["defaultValue"] == {"batch_size": 16}
    assert params["student_settings"]["defaultValue"] == {}
    assert {e["container"]["image"] for e in executors(spec).values()} == {"kdrank:dev"}


def test_cli_refuses_a_negative_shard_count(tmp_path):
    with pytest.raises(ValueError, match="num_shards must be between 1 and"):
        cli("pipeline", "compile", "--output", str(tmp_path / "x.yaml"), "--shards", "-2")


def test_cli_run_needs_local(tmp_path):
    with pytest.raises(ValueError, match="--local"):
        cli("pipeline", "run", "--output", str(tmp_path))


@pytest.mark.parametrize(("item", "message"), [
    ("teacher.epochs", "STEP.SETTING=VALUE"), ("epochs=2", "STEP.SETTING=VALUE"), (".epochs=2", "STEP.SETTING=VALUE"),
    ("teachr.epochs=2", "unknown step 'teachr'"),
])
def test_bad_set_items_are_refused(item, message):
    with pytest.raises(ValueError, match=message):
        commands.parse_overrides([item])


def test_set_values_read_as_yaml_with_exponent_numbers_as_numbers():
    got = commands.parse_overrides(["teacher.learning_rate=1e-4", "teacher.batch_size=256", "student.loss=margin_mse",
                                    "teacher.head_init=verbaliser", "student.learning_rate=5E-5", "label.x=1.0e-3",
                                    "teacher.verbaliser=[Low, Medium, High]", "student.base_model=1e4-model"])
    assert got == {"teacher": {"learning_rate": 1e-4, "batch_size": 256, "head_init": "verbaliser",
                               "verbaliser": ["Low", "Medium", "High"]},
                   "student": {"loss": "margin_mse", "learning_rate": 5e-5, "base_model": "1e4-model"},
                   "label": {"x": 1e-3}}
    # the fast teacher recipe of docs/results.md compiles (it failed in check_profile with lr as a string)
    RunDefaults(profile="full", overrides=commands.parse_overrides(
        ["teacher.batch_size=256", "teacher.learning_rate=1e-4"])).resolved()


def test_each_step_gets_only_its_own_settings(tmp_path):
    """Changing the student's settings must leave the teacher's inputs (and so its cache) unchanged."""
    path = compile_pipeline(str(tmp_path / "s.yaml"), defaults=RunDefaults(overrides={"student": {"epochs": 3}}))
    spec, _ = parse_strict(path)
    tasks = spec.root.dag.tasks
    assert set(tasks["train-teacher"].inputs.parameters) == {"profile", "teacher_base", "settings"}
    assert tasks["train-teacher"].inputs.parameters["settings"].component_input_parameter == "teacher_settings"
    assert tasks["train-student"].inputs.parameters["settings"].component_input_parameter == "student_settings"


def test_submit_names_an_unreachable_endpoint(tmp_path):
    from kdrank_testing import free_port

    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RuntimeError, match=f"Kubeflow Pipelines at {host} refused the run or is unreachable"):
        cli("pipeline", "submit", "--host", host, "--profile", "test", "--shards", "1")


def test_submit_wants_an_http_url():
    with pytest.raises(ValueError, match="http"):
        cli("pipeline", "submit", "--host", "kfp.example.com")


def test_kdrank_run_takes_set_and_refuses_a_bad_setting_before_writing(tmp_path, capsys):
    from pipelines import cli as kdrank

    out = tmp_path / "run"
    assert kdrank.main(["run", "--profile", "full", "--output", str(out), "--shards", "2",
                        "--set", "teacher.batch_size=256", "--set", "teacher.learning_rate=fast"]) == 2
    assert "step 'teacher': setting 'learning_rate' must be a number, got 'fast'" in capsys.readouterr().err
    assert not out.exists()
    assert kdrank.main(["run", "--output", str(out), "--set", "teachr.epochs=2"]) == 2
    assert "unknown step 'teachr'" in capsys.readouterr().err and not out.exists()


@pytest.fixture
def submitted(monkeypatch) -> list:
    """What `pipeline submit` would send: (options, package, its text) per call; no Kubeflow endpoint needed."""
    import pipelines.submit

    calls = []

    def submit(options, package):
        with open(package) as handle:
            calls.append((options, package, handle.read()))
        return "r1"

    monkeypatch.setattr(pipelines.submit, "submit", submit)
    return calls


def test_submit_of_a_package_sends_the_shard_count_asked_for(tmp_path, submitted):
    package = compile_pipeline(str(tmp_path / "p.yaml"), defaults=RunDefaults(profile="test", num_shards=3))
    host = ("--host", "http://kfp.example:8888", "--package", package)
    cli("pipeline", "submit", *host, "--profile", "full")  # the profile's count, not the compiled 3
    cli("pipeline", "submit", *host, "--set", "label.num_shards=5")  # label.num_shards is the shard count
    cli("pipeline", "submit", *host, "--profile", "full", "--shards", "6", "--set", "label.num_shards=5")
    cli("pipeline", "submit", *host, "--set", "label.batch_size=8")  # nothing said: the compiled default
    sent = [options.arguments for options, _, _ in submitted]
    assert [a.get("num_shards") for a in sent] == [4, 5, 6, None]
    assert sent[0]["profile"] == "full" and sent[1]["label_settings"] == {"num_shards": 5}
    assert {p for _, p, _ in submitted} == {package}
    with pytest.raises(ValueError, match="num_shards must be an integer"):
        cli("pipeline", "submit", *host, "--set", "label.num_shards=many")


@pytest.mark.parametrize("flags", [("--image", "kdrank:dev"), ("--cpu",), ("--accelerator-count", "1"),
                                   ("--toleration", "a:NoSchedule", "--gcs-secret", "s")])
def test_submit_refuses_cluster_flags_a_package_ignores(tmp_path, submitted, flags):
    package = compile_pipeline(str(tmp_path / "p.yaml"), defaults=RunDefaults(profile="test"))
    with pytest.raises(ValueError, match=f"{flags[0]}.*no effect on --package"):
        cli("pipeline", "submit", "--host", "http://kfp.example:8888", "--package", package, *flags)
    assert not submitted


def test_submit_refuses_this_machines_paths_which_no_pod_can_read(tmp_path, submitted):
    data = tmp_path / "train.csv"
    data.write_text("x")
    with pytest.raises(ValueError, match=rf"--data {data}, --student-model students/v1: a cluster's pods cannot"):
        cli("pipeline", "submit", "--host", "http://kfp.example:8888", "--profile", "test", "--data", str(data),
            "--student-model", "students/v1", "--teacher-model", "gs://bucket/teacher")
    assert not submitted
    cli("pipeline", "submit", "--host", "http://kfp.example:8888", "--profile", "test",
        "--data", "gs://bucket/train.csv", "--teacher-model", "gs://bucket/teacher")
    assert submitted[0][0].arguments["data_uri"] == "gs://bucket/train.csv"


def test_submit_without_a_package_compiles_the_cluster_flags(submitted):
    cli("pipeline", "submit", "--host", "http://kfp.example:8888", "--cpu", "--image", "kdrank:dev",
        "--profile", "test", "--set", "label.num_shards=3")
    ((options, _, text),) = submitted
    assert options.arguments["num_shards"] == 3
    assert "image: kdrank:dev" in text and "accelerator" not in text


def test_cli_names_a_bad_output_path_in_one_line(tmp_path, capsys):
    from pipelines import cli as kdrank

    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert kdrank.main(["pipeline", "compile", "--output", str(tmp_path), "--profile", "test"]) == 2
    assert capsys.readouterr().err.strip() == f"kdrank pipeline: error: {tmp_path} is a folder; give the path of the " \
                                              "YAML file to write"
    assert kdrank.main(["pipeline", "compile", "--output", str(a_file / "x.yaml"), "--profile", "test"]) == 2
    assert capsys.readouterr().err.strip() == f"kdrank pipeline: error: File exists: {a_file}"
    assert kdrank.main(["run", "--output", str(a_file), "--profile", "test"]) == 2
    assert capsys.readouterr().err.strip() == f"kdrank run: error: output folder {a_file} is a file"


@pytest.fixture
def fake_pipeline(monkeypatch, tmp_path):
    """Stand in for the compiled pipeline's kfp.local run: `fail` set, it fails as a failed step does; else it
    returns every output, as files under tmp_path/root (the steps are tested elsewhere, and take minutes)."""
    import kfp.components

    from pipelines.training import TrainingOutputs

    state = {"fail": False, "runs": 0}

    def load(path):
        def run(**arguments):
            state["runs"] += 1
            if state["fail"]:
                raise RuntimeError("Task train-student finished with status FAILURE.")
            root = tmp_path / "root"
            outputs = {}
            for name in TrainingOutputs._fields:
                count = arguments["num_shards"] if name == "labels" else 0
                for i in range(max(count, 1)):
                    (root / f"{name}-{i}").mkdir(parents=True, exist_ok=True)
                outputs[name] = ([str(root / f"{name}-{i}") for i in range(count)] if count
                                 else str(root / f"{name}-0"))
            outputs["metrics"], outputs["table"] = str(root / "metrics.json"), str(root / "table.md")
            (root / "metrics.json").write_text('{"student": {"ndcg@10": 0.5}}')
            (root / "table.md").write_text("| student |\n")
            return argparse.Namespace(outputs=outputs)
        return run

    monkeypatch.setattr(kfp.components, "load_component_from_file", load)
    return state


def shard_default(path) -> int:
    return documents(path)[0]["root"]["inputDefinitions"]["parameters"]["num_shards"]["defaultValue"]


def test_a_failed_rerun_leaves_the_last_good_runs_yaml_links_and_summary(tmp_path, fake_pipeline):
    from pipelines.local import PENDING_FILE, PIPELINE_FILE, SUMMARY_FILE, run_local

    output = tmp_path / "run"
    first = run_local(str(output), profile="test", num_shards=2, quiet=True)
    assert first["pipeline"] == str(output / PIPELINE_FILE) and not (output / PENDING_FILE).exists()
    assert shard_default(output / PIPELINE_FILE) == 2
    good = {name: (output / name).read_text() for name in (PIPELINE_FILE, SUMMARY_FILE)}

    fake_pipeline["fail"] = True
    with pytest.raises(RuntimeError, match="train-student"):
        run_local(str(output), profile="test", num_shards=3, quiet=True)
    assert {name: (output / name).read_text() for name in good} == good  # the YAML still is the one run.json ran
    assert not (output / PENDING_FILE).exists()
    assert (output / "student").resolve() == Path(first["artifacts"]["student"]).resolve()

    fake_pipeline["fail"] = False  # the rerun succeeds: now its YAML, links and summary replace the first's
    second = run_local(str(output), profile="test", num_shards=3, quiet=True)
    assert shard_default(output / PIPELINE_FILE) == 3 and len(second["artifacts"]["labels"]) == 3
    assert (output / "labels" / "shard-2").resolve() == Path(second["artifacts"]["labels"][2]).resolve()


def test_a_folder_that_would_block_the_links_is_refused_before_the_run(tmp_path, fake_pipeline):
    from pipelines.local import PIPELINE_FILE, ROOT_DIR, run_local

    output = tmp_path / "run"
    (output / "data").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=f"{output / 'data'} exists and is not a link"):
        run_local(str(output), profile="test", quiet=True)
    (output / "data").rmdir()
    (output / "labels" / "shard-1").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=f"{output / 'labels' / 'shard-1'} exists and is not a link"):
        run_local(str(output), profile="test", num_shards=2, quiet=True)
    assert fake_pipeline["runs"] == 0
    assert not (output / ROOT_DIR).exists() and not (output / PIPELINE_FILE).exists()
