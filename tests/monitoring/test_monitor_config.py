"""Thresholds: defaults from thresholds.yaml, partial files and KEY=VALUE overrides, clear errors."""

from __future__ import annotations

import pytest
import yaml

from monitoring.config import DEFAULTS_FILE, P_VALUE_METHODS, load_thresholds, parse_assignment


def test_defaults_come_from_the_yaml_file():
    thresholds = load_thresholds()
    raw = yaml.safe_load(DEFAULTS_FILE.read_text())
    assert thresholds.to_dict() == raw
    assert thresholds.agreement.mae_max == raw["agreement"]["mae_max"]
    assert not thresholds.text_drift.critical and thresholds.prediction_drift.critical


def test_partial_file_overrides_only_its_keys(tmp_path):
    path = tmp_path / "strict.yaml"
    path.write_text("agreement:\n  mae_max: 0.2\ntext_drift:\n  enabled: false\n")
    thresholds = load_thresholds(path)
    assert thresholds.agreement.mae_max == 0.2 and not thresholds.text_drift.enabled
    assert thresholds.agreement.rmse_max == load_thresholds().agreement.rmse_max


def test_set_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("agreement: {mae_max: 0.2}\n")
    thresholds = load_thresholds(path, ["agreement.mae_max=0.25", "input_drift.method=ks",
                                        "input_drift.threshold=0.01", "model_version.critical=true"])
    assert thresholds.agreement.mae_max == 0.25
    assert thresholds.input_drift.method == "ks" and thresholds.input_drift.is_p_value
    assert thresholds.model_version.critical is True


@pytest.mark.parametrize("override, message", [
    ("agreement.mae_maxx=0.2", "unknown key(s) ['agreement.mae_maxx']"),
    ("agreement.mae_max=low", "'agreement.mae_max' must be a number"),
    ("prediction_drift.method=magic", "unknown drift method 'magic'"),
    ("text_drift.enabled=maybe", "'text_drift.enabled' must be true or false"),
    ("agreement=0.3", "'agreement' must be a mapping"),
    ("no-equals-sign", "is not KEY=VALUE"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError) as err:
        load_thresholds(None, [override])
    assert message in str(err.value)


def test_bad_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("agreement: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_thresholds(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_thresholds(path)
    with pytest.raises(FileNotFoundError):
        load_thresholds(tmp_path / "missing.yaml")


def test_parse_assignment_types_values_as_yaml():
    assert parse_assignment("a.b=0.5") == {"a": {"b": 0.5}}
    assert parse_assignment("a=false") == {"a": False}
    assert parse_assignment("a.b=ks") == {"a": {"b": "ks"}}
    assert "ks" in P_VALUE_METHODS
