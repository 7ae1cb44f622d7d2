"""The monitoring job end to end: real teacher labelling, real Evidently report, JSON summary, exit code."""

from __future__ import annotations

import json
from pathlib import Path

import monitor_traffic as traffic
import numpy as np
import pandas as pd
import pytest

from components import schema
from components.schema import DataError
from monitoring import job
from monitoring.config import load_thresholds
from monitoring.job import HTML_FILE, SAMPLE_FILE, SNAPSHOT_FILE, SUMMARY_FILE, monitor
from monitoring.reference import TABLE_FILE, read_reference
from pipelines.cli import main

AGREEMENT = ["agreement.mae", "agreement.rmse", "agreement.rank_correlation", "agreement.grade"]
EVERY_TEST = ["rows", *AGREEMENT, "prediction_drift", "teacher_drift", "input_drift.query_tokens",
              "input_drift.product_tokens", "input_drift.query_token_overlap", "input_drift.query_text",
              "input_drift.product_text", "model_version"]


@pytest.fixture(scope="module")
def monitor_traffic(tmp_path_factory, tiny_teacher_dir, tiny_student_dir) -> traffic.Traffic:
    return traffic.build_traffic(tmp_path_factory.mktemp("monitor-traffic"), tiny_teacher_dir, tiny_student_dir)


def statuses(summary: dict) -> dict[str, str]:
    return {t["key"]: t["status"] for t in summary["tests"]}


@pytest.fixture(scope="module")
def cli_runs(monitor_traffic, tmp_path_factory):
    """The good and the degraded window through `kdrank monitor`, into one Evidently workspace."""
    root = tmp_path_factory.mktemp("monitor-cli")
    workspace = root / "workspace"
    runs = {}
    for name in ("good", "degraded"):
        out = root / name
        code = main(["monitor", "--window", getattr(monitor_traffic, name), "--reference", monitor_traffic.reference,
                     "--output", str(out), "--workspace", str(workspace)])
        runs[name] = (code, out, json.loads((out / SUMMARY_FILE).read_text()))
    return runs, workspace


def test_unshifted_window_passes_every_test(cli_runs, monitor_traffic):
    code, _, summary = cli_runs[0]["good"]
    assert code == 0
    assert summary["passed"] and summary["failed"] == []
    assert statuses(summary) == dict.fromkeys(EVERY_TEST, "SUCCESS")
    values = {t["key"]: t for t in summary["tests"]}
    assert values["agreement.rank_correlation"]["value"] > 0.7
    assert values["agreement.mae"]["reference_value"] < 0.15  # the reference set agrees too, by construction
    assert summary["sample"]["student_scores"] == "logged" and summary["sample"]["rows"] == 800
    assert summary["sample"]["teacher_labels"] == monitor_traffic.teacher  # recorded in the reference set
    assert summary["window"]["served_by"] == {"kdrank_student:1": 800} and summary["warnings"] == []


def test_degraded_student_fails_the_agreement_tests(cli_runs):
    code, _, summary = cli_runs[0]["degraded"]
    assert code == 1
    status = statuses(summary)
    assert all(status[k] == "FAIL" for k in AGREEMENT), status
    # Shuffling within queries keeps the score distribution and the inputs: no drift is claimed.
    assert status["prediction_drift"] == "SUCCESS" and status["input_drift.query_tokens"] == "SUCCESS"
    assert sorted(summary["failed"]) == sorted(AGREEMENT)


def test_outputs_sit_side_by_side_and_are_complete(cli_runs):
    _, out, summary = cli_runs[0]["good"]
    html = (out / HTML_FILE).read_text()
    assert len(html) > 100_000 and "Mean Absolute Error" in html and "query_token_overlap" in html
    assert (out / SNAPSHOT_FILE).stat().st_size > 10_000
    sample = pd.read_parquet(out / SAMPLE_FILE)
    assert len(sample) == 800 and {"teacher_probs", "teacher_score", "student_grade"} <= set(sample.columns)
    assert set(summary["outputs"]) == {HTML_FILE, SNAPSHOT_FILE, SAMPLE_FILE, SUMMARY_FILE}
    for test in summary["tests"]:
        assert test["status"] in ("SUCCESS", "FAIL", "WARNING", "ERROR")
        assert {"value", "threshold", "condition", "critical", "description"} <= set(test)
    assert summary["thresholds"] == load_thresholds().to_dict()
    assert summary["timings_s"]["teacher_labelling"] > 0


def test_every_run_is_appended_to_the_workspace(cli_runs):
    from evidently.ui.workspace import Workspace

    runs, workspace = cli_runs
    ws = Workspace(str(workspace))
    [project] = ws.search_project("kdrank monitoring")
    assert len(ws.list_runs(project.id)) == 2
    assert {runs[n][2]["workspace"]["snapshot_id"] for n in runs} == {str(s) for s in ws.list_runs(project.id)}


def test_a_saved_sample_is_rechecked_without_relabelling(cli_runs, monitor_traffic, tmp_path):
    _, out, first = cli_runs[0]["good"]
    again = monitor(str(out / SAMPLE_FILE), monitor_traffic.reference, str(tmp_path / "again"),
                    overrides=["agreement.mae_max=0.01"])
    assert again.summary["sample"]["teacher_labels"] == "window"
    before, after = ({t["key"]: t["value"] for t in s["tests"]} for s in (first, again.summary))
    assert all(after[k] == pytest.approx(before[k]) for k in AGREEMENT)
    assert again.summary["failed"] == ["agreement.mae"]  # the new threshold, on the same labels


def test_shifted_queries_fail_the_input_drift_test(monitor_traffic, tmp_path):
    result = monitor(monitor_traffic.shifted, monitor_traffic.reference, str(tmp_path / "out"))
    status = statuses(result.summary)
    assert not result.passed
    assert status["input_drift.query_tokens"] == "FAIL" and status["input_drift.query_token_overlap"] == "FAIL"
    assert status["input_drift.query_text"] == "WARNING"  # text drift is a warning by default
    assert Path(result.json_path).is_file() and Path(result.html_path).is_file()


def test_another_model_version_warns_in_summary_and_report(monitor_traffic, tmp_path):
    log = pd.read_json(monitor_traffic.good, lines=True).head(240)
    log["model_version"] = "2"
    window = traffic.write_jsonl(log, tmp_path / "v2.jsonl")
    result = monitor(window, monitor_traffic.reference, str(tmp_path / "out"))
    [warning] = result.summary["warnings"]
    assert "kdrank_student:2" in warning and "kdrank_student:1" in warning
    assert statuses(result.summary)["model_version"] == "WARNING"
    assert result.passed  # a warning, not a failure
    assert "served_by_reference_model" in Path(result.html_path).read_text()


def test_window_without_scores_is_scored_by_the_student(monitor_traffic, tmp_path):
    log = pd.read_json(monitor_traffic.good, lines=True).head(200).drop(columns=["score"])
    window = traffic.write_jsonl(log, tmp_path / "unscored.jsonl")
    result = monitor(window, monitor_traffic.reference, str(tmp_path / "out"), student_dir=monitor_traffic.student)
    assert result.summary["sample"]["student_scores"] == "student"
    sample = pd.read_parquet(Path(tmp_path, "out", SAMPLE_FILE))
    assert sample["student_score"].notna().all() and sample["student_score"].std() > 0
    # A random tiny student does not agree with the teacher: the job must say so.
    assert statuses(result.summary)["agreement.rank_correlation"] == "FAIL"


def test_window_reference_and_report_on_gcs(monitor_traffic, gcs_emulator, tmp_path):
    from components import storage

    bucket = f"gs://{gcs_emulator}/monitoring"
    log = pd.read_json(monitor_traffic.good, lines=True).head(160)
    for part, rows in enumerate((log.iloc[:80], log.iloc[80:])):  # a sink writes one file per flush
        local = tmp_path / f"part-{part}.parquet"
        rows.to_parquet(local, index=False)
        storage.write_bytes(f"{bucket}/logs/requests-{part}.parquet", local.read_bytes())
    storage.upload_dir(monitor_traffic.reference, f"{bucket}/reference")
    code = main(["monitor", "--window", f"{bucket}/logs", "--reference", f"{bucket}/reference",
                 "--output", f"{bucket}/report", "--no-workspace", "--json"])
    summary = json.loads(storage.read_text(f"{bucket}/report/{SUMMARY_FILE}"))
    assert code == 0 and summary["passed"] and summary["window"]["rows"] == 160
    assert storage.exists(f"{bucket}/report/{HTML_FILE}")


@pytest.mark.parametrize("case, message", [
    ("empty", "no logged requests (0 rows)"),
    ("no_query", "missing column(s) ['query']"),
    ("nan_score", "logged scores are NaN"),
    ("no_score", "missing column(s) ['score']"),
    ("no_reference", "is not a reference set"),
])
def test_bad_input_gives_a_clear_message_and_exit_2(monitor_traffic, tmp_path, capsys, case, message):
    log = pd.read_json(monitor_traffic.good, lines=True).head(50)
    reference = monitor_traffic.reference
    if case == "empty":
        (tmp_path / "w.jsonl").write_text("")
    else:
        if case == "no_query":
            log = log.drop(columns=["query"])
        elif case == "nan_score":
            log.loc[7, "score"] = float("nan")
        elif case == "no_score":
            log = log.drop(columns=["score"])
        elif case == "no_reference":
            reference = str(tmp_path)
        traffic.write_jsonl(log, tmp_path / "w.jsonl")
    code = main(["monitor", "--window", str(tmp_path / "w.jsonl"), "--reference", reference,
                 "--output", str(tmp_path / "out"), "--no-workspace"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / SUMMARY_FILE).exists()


def test_nan_score_message_names_the_row(monitor_traffic, tmp_path):
    from components.schema import DataError

    log = pd.read_json(monitor_traffic.good, lines=True).head(50)
    log.loc[7, "score"] = float("nan")
    window = traffic.write_jsonl(log, tmp_path / "w.jsonl")
    with pytest.raises(DataError, match=r"w.jsonl, row 8, column 'score': 1 of the window's 50 logged scores"):
        monitor(window, monitor_traffic.reference, str(tmp_path / "out"))


# The tests below need no models: the window already carries teacher labels (as a saved sample does).
NO_TEXT = ["text_drift.enabled=false"]  # the text classifier is the slowest check and not under test here


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("labelled")
    window = root / "window.parquet"
    traffic.labelled_log(60, 4).to_parquet(window, index=False)
    return {"reference": traffic.labelled_reference(root / "reference"), "window": str(window)}


def test_a_workspace_that_fails_keeps_the_report_and_exits_2(labelled, tmp_path, monkeypatch, capsys):
    from evidently.ui.workspace import Workspace

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "workspace"))

    monkeypatch.setattr(Workspace, "create", refuse)
    out = tmp_path / "out"
    code = main(["monitor", "--window", labelled["window"], "--reference", labelled["reference"], "--output",
                 str(out), "--workspace", str(tmp_path / "workspace"), *(f"--set={o}" for o in NO_TEXT)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "could not add the run to the Evidently workspace" in err and "Permission denied" in err
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["passed"] and "Permission denied" in summary["workspace"]["error"]
    assert (out / HTML_FILE).is_file() and (out / SNAPSHOT_FILE).is_file() and (out / SAMPLE_FILE).is_file()


def test_a_workspace_path_that_cannot_be_a_directory_fails_before_any_work(labelled, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = tmp_path / "out"
    code = main(["monitor", "--window", labelled["window"], "--reference", labelled["reference"], "--output",
                 str(out), "--workspace", str(blocker / "workspace")])
    err = capsys.readouterr().err
    assert code == 2 and f"{blocker} is not a directory" in err and "Traceback" not in err
    assert not out.exists()  # nothing written, nothing labelled


@pytest.mark.parametrize("option, value", [("--sample-size", "0"), ("--max-pairs-per-query", "0"),
                                           ("--max-pairs-per-query", "-1"), ("--reference-size", "0")])
def test_size_options_below_one_are_rejected_naming_the_option(labelled, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        main(["monitor", "--window", labelled["window"], "--reference", labelled["reference"], "--output",
              str(tmp_path / "out"), "--no-workspace", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: must be >= 1, got {value}" in capsys.readouterr().err
    name = option.lstrip("-").replace("-", "_")
    with pytest.raises(ValueError, match=f"{name} must be a whole number >= 1, got {value}"):
        monitor(labelled["window"], labelled["reference"], str(tmp_path / "out"),
                **{"sample_size": 100, name: int(value)})  # 240 logged pairs: the sampler would run
    assert not (tmp_path / "out").exists()


def test_the_window_end_is_the_latest_time_whatever_the_formats():
    logged = pd.DataFrame({"time": ["2025-01-01T00:00:00+00:00", "2025-01-03T12:30:00.250+00:00",
                                    "2025-01-02T00:00:00+01:00", "not a time"]})
    start, end, end_time = job._time_range(logged)
    assert (start, end) == ("2025-01-01T00:00:00+00:00", "2025-01-03T12:30:00.250000+00:00")
    assert end_time.isoformat() == end


def test_the_reference_subsample_draws_queries_uniformly():
    """One held-out query has 400 pairs, 100 others 2 each: drawn uniformly, the big one comes first about
    once in 101 draws (weighted by its pairs, 2 times in 3)."""
    big = pd.DataFrame({schema.QUERY_ID: "big", schema.PRODUCT_ID: [f"b{i}" for i in range(400)]})
    small = pd.DataFrame({schema.QUERY_ID: [f"q{q}" for q in range(100) for _ in range(2)],
                          schema.PRODUCT_ID: [f"p{i}" for i in range(200)]})
    reference = pd.concat([big, small], ignore_index=True)
    firsts = [job._reference_sample(reference, 100, seed=s)[schema.QUERY_ID].iloc[0] for s in range(300)]
    assert np.mean([q == "big" for q in firsts]) < 0.05
    assert len(job._reference_sample(reference, 100, seed=0)) == 100
    assert job._reference_sample(reference, len(reference), seed=0) is reference


def test_a_corrupt_reference_table_is_a_data_error_naming_the_file(labelled, tmp_path, capsys):
    import shutil

    broken = tmp_path / "reference"
    shutil.copytree(labelled["reference"], broken)
    (broken / TABLE_FILE).write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match=f"file {broken / TABLE_FILE}: unreadable reference table"):
        read_reference(str(broken))
    code = main(["monitor", "--window", labelled["window"], "--reference", str(broken), "--output",
                 str(tmp_path / "out"), "--no-workspace"])
    assert code == 2 and str(broken / TABLE_FILE) in capsys.readouterr().err


def test_a_sample_scored_by_the_student_is_rechecked_without_it(labelled, tmp_path):
    """A run with --student writes student_score but no logged score; re-checking the sample reuses them."""
    first = monitor(labelled["window"], labelled["reference"], str(tmp_path / "first"), overrides=NO_TEXT)
    sample = pd.read_parquet(tmp_path / "first" / SAMPLE_FILE).drop(columns=["score"])  # as --student leaves it
    rescored = tmp_path / "student-scored.parquet"
    sample.to_parquet(rescored, index=False)
    again = monitor(str(rescored), labelled["reference"], str(tmp_path / "again"), overrides=NO_TEXT)
    assert again.summary["sample"]["teacher_labels"] == "window" and again.summary["sample"]["rows"] == 240
    before, after = ({t["key"]: t["value"] for t in r.summary["tests"]} for r in (first, again))
    assert all(after[k] == pytest.approx(before[k]) for k in AGREEMENT)


def test_an_output_inside_the_window_folder_is_refused_before_any_work(labelled, tmp_path, capsys):
    folder = tmp_path / "window"
    folder.mkdir()
    pd.read_parquet(labelled["window"]).to_parquet(folder / "part-0.parquet", index=False)
    code = main(["monitor", "--window", str(folder), "--reference", labelled["reference"], "--output",
                 str(folder / "report"), "--no-workspace"])
    err = capsys.readouterr().err
    assert code == 2 and "is inside the window folder" in err and "Traceback" not in err
    assert not (folder / "report").exists()


def test_a_version_logged_as_a_number_or_missing_on_some_rows_is_not_a_mismatch(labelled, tmp_path):
    log = pd.read_parquet(labelled["window"])
    version = log["model_version"].astype(int).astype(object)  # a server that logs it as a number
    version[::5] = None  # some rows do not log it: JSONL then reads the others as floats (1.0)
    window = traffic.write_jsonl(log.assign(model_version=version), tmp_path / "w.jsonl")
    result = monitor(window, labelled["reference"], str(tmp_path / "out"), overrides=NO_TEXT)
    assert not result.summary["warnings"]
    assert statuses(result.summary)["model_version"] != "WARNING"


def test_missing_or_ragged_teacher_probabilities_are_named_by_row(labelled, tmp_path):
    from components.schema import DataError

    log = pd.read_parquet(labelled["window"])
    probs = list(log["teacher_probs"])
    probs[3] = None
    window = tmp_path / "w.parquet"
    log.assign(teacher_probs=probs).to_parquet(window, index=False)
    with pytest.raises(DataError, match=r"w.parquet, row 4, column 'teacher_probs': 1 rows' teacher probabilities"):
        monitor(str(window), labelled["reference"], str(tmp_path / "out"), overrides=NO_TEXT)
    assert not (tmp_path / "out").exists()
