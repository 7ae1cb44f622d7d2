"""Thresholds: defaults from thresholds.yaml, partial files and KEY=VALUE overrides, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from monitoring import config, report
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


# One case per (method, kind) kdrank accepts; a two-valued column is tested only where a method needs one.
METHOD_KINDS = [(m, k) for m, (_, kinds) in sorted(config.DRIFT_METHODS.items()) for k in sorted(kinds)
                if k != config.BINARY or config.CATEGORICAL not in kinds]
TOOLS = ["drill", "cordless", "battery", "charger", "saw", "blade", "hammer", "wrench", "paint", "brush", "lamp"]
GARDEN = ["hose", "garden", "mower", "lawn", "sprinkler", "rake", "shovel", "planter", "soil", "seed", "fence"]


def reference_and_shifted(kind: str, n: int = 200) -> tuple[pd.Series, pd.Series]:
    """A reference sample of the kind and a clearly shifted one."""
    rng = np.random.default_rng(0)
    if kind == config.NUMERICAL:
        return pd.Series(rng.normal(0, 1, n)), pd.Series(rng.normal(1.5, 1, n))
    if kind == config.CATEGORICAL:
        return (pd.Series(rng.choice(["a", "b", "c"], n, p=p)) for p in ([.5, .3, .2], [.1, .2, .7]))
    if kind == config.BINARY:
        return (pd.Series(rng.choice(["a", "b"], n, p=p)) for p in ([.7, .3], [.2, .8]))
    return (pd.Series([" ".join(rng.choice(words, 6)) for _ in range(n)]) for words in (TOOLS, GARDEN))


@pytest.mark.parametrize("method, kind", METHOD_KINDS)
@pytest.mark.filterwarnings("ignore:p-value (floored|capped)")  # scipy's anderson_ksamp on the extremes
def test_drift_direction_and_column_kinds_match_evidently(method, kind):
    """What kdrank assumes of each method (score direction, column kinds) is what Evidently's stattest does:
    the same data passes kdrank's test condition and a clear shift fails it, as Evidently itself decides."""
    from evidently.legacy.calculations.stattests.registry import StatTestInvalidFeatureTypeError, get_stattest
    from evidently.legacy.core import ColumnType

    column_types = {config.NUMERICAL: ColumnType.Numerical, config.CATEGORICAL: ColumnType.Categorical,
                    config.BINARY: ColumnType.Categorical, config.TEXT: ColumnType.Text}
    reference, shifted = reference_and_shifted(kind)
    same = reference.sample(frac=1.0, random_state=1).reset_index(drop=True)
    stattest = get_stattest(reference, same, column_types[kind], method)
    allowed = {column_types[k] for k in config.DRIFT_METHODS[method][1]}
    assert set(stattest.allowed_feature_types) == allowed
    for other in set(column_types.values()) - allowed:
        with pytest.raises(StatTestInvalidFeatureTypeError):
            get_stattest(reference, same, other, method)

    check = config.DriftCheck(method=method, threshold=stattest.default_threshold, critical=True)
    condition = report._drift("key", "column", check, "what").condition
    passes = {"lt": lambda score: score < check.threshold, "gte": lambda score: score >= check.threshold}[condition]
    for current, drifted in ((same, False), (shifted, True)):
        result = stattest(reference, current, column_types[kind], check.threshold)
        assert bool(result.drifted) == drifted, (method, kind, result)
        assert bool(passes(result.drift_score)) == (not drifted), (method, kind, condition, result)


@pytest.mark.parametrize("override, message", [
    ("input_drift.method=chisquare", "'input_drift.method': chisquare applies to categorical columns but "
                                     "input_drift checks numerical columns"),
    ("prediction_drift.method=abs_text_content_drift", "'prediction_drift.method': abs_text_content_drift"),
    ("source_drift.method=ks", "'source_drift.method': ks applies to numerical columns"),
    ("source_drift.method=fisher_exact", "fisher_exact applies to two-valued categorical columns"),
    ("text_drift.method=psi", "'text_drift.method': psi applies to"),
    ("teacher_drift.method=magic", "'teacher_drift.method': unknown drift method 'magic'"),
    ("text_drift.sample_size=0", "'text_drift.sample_size' must be >= 1, got 0"),
])
def test_settings_that_cannot_run_are_rejected_when_loaded(override, message):
    with pytest.raises(ValueError) as err:
        load_thresholds(None, [override])
    assert message in str(err.value)


def test_empirical_mmd_is_a_p_value_test():
    thresholds = load_thresholds(None, ["prediction_drift.method=empirical_mmd", "prediction_drift.threshold=0.05"])
    assert thresholds.prediction_drift.is_p_value
