"""Monitoring thresholds: defaults in thresholds.yaml, overridden per run by a partial file or KEY=VALUE.

The YAML file is the only place defaults live; the dataclasses give them types and reject unknown
keys, so a typo in an override is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from components import storage

DEFAULTS_FILE = Path(__file__).with_name("thresholds.yaml")

# Column kinds a drift check reads. Binary: a categorical column of at most two values (z, fisher_exact
# need that; the retrieval source usually has more).
NUMERICAL, CATEGORICAL, BINARY, TEXT = "numerical", "categorical", "binary", "text"
DISTANCE, P_VALUE = "distance", "p-value"

# Evidently's drift methods (evidently/legacy/calculations/stattests): what the score means and the column
# kinds each applies to. A distance drifts when it is >= the threshold, a p-value when it is < the
# threshold. tests/monitoring/test_monitor_config.py checks this table against Evidently itself.
DRIFT_METHODS: dict[str, tuple[str, frozenset[str]]] = {
    "wasserstein": (DISTANCE, frozenset({NUMERICAL})),
    "psi": (DISTANCE, frozenset({NUMERICAL, CATEGORICAL, BINARY})),
    "jensenshannon": (DISTANCE, frozenset({NUMERICAL, CATEGORICAL, BINARY})),
    "hellinger": (DISTANCE, frozenset({NUMERICAL, CATEGORICAL, BINARY})),
    "kl_div": (DISTANCE, frozenset({NUMERICAL, CATEGORICAL, BINARY})),
    "ed": (DISTANCE, frozenset({NUMERICAL})),
    "abs_text_content_drift": (DISTANCE, frozenset({TEXT})),  # ROC AUC of a domain classifier
    "ks": (P_VALUE, frozenset({NUMERICAL})),
    "mannw": (P_VALUE, frozenset({NUMERICAL})),
    "anderson": (P_VALUE, frozenset({NUMERICAL})),
    "cramer_von_mises": (P_VALUE, frozenset({NUMERICAL})),
    "t_test": (P_VALUE, frozenset({NUMERICAL})),
    "es": (P_VALUE, frozenset({NUMERICAL})),
    "empirical_mmd": (P_VALUE, frozenset({NUMERICAL})),  # a permutation test's p-value, not the MMD itself
    "chisquare": (P_VALUE, frozenset({CATEGORICAL, BINARY})),
    "g_test": (P_VALUE, frozenset({CATEGORICAL, BINARY})),
    "TVD": (P_VALUE, frozenset({CATEGORICAL, BINARY})),  # a permutation test's p-value on the distance
    "z": (P_VALUE, frozenset({BINARY})),
    "fisher_exact": (P_VALUE, frozenset({BINARY})),
}
DISTANCE_METHODS = frozenset(m for m, (score, _) in DRIFT_METHODS.items() if score == DISTANCE)
P_VALUE_METHODS = frozenset(m for m, (score, _) in DRIFT_METHODS.items() if score == P_VALUE)
# The kind of column each drift check reads (monitoring/report.py builds them).
CHECK_KINDS = {"prediction_drift": NUMERICAL, "teacher_drift": NUMERICAL, "input_drift": NUMERICAL,
               "source_drift": CATEGORICAL, "text_drift": TEXT}


@dataclass
class AgreementThresholds:
    mae_max: float
    rmse_max: float
    rank_correlation_min: float
    min_pairs_per_query: int
    grade_agreement_min: float


@dataclass
class DriftCheck:
    method: str
    threshold: float
    critical: bool

    @property
    def is_p_value(self) -> bool:
        """Whether the method's score is a p-value (drift below the threshold), else a distance."""
        if self.method not in DRIFT_METHODS:
            raise ValueError(f"unknown drift method '{self.method}'")
        return self.method in P_VALUE_METHODS


@dataclass
class TextDriftCheck(DriftCheck):
    enabled: bool
    sample_size: int


@dataclass
class ModelVersionCheck:
    min_share: float
    critical: bool


@dataclass
class Thresholds:
    min_rows: int
    agreement: AgreementThresholds
    prediction_drift: DriftCheck
    teacher_drift: DriftCheck
    input_drift: DriftCheck
    source_drift: DriftCheck
    text_drift: TextDriftCheck
    model_version: ModelVersionCheck

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data, where: str):
    """A dataclass from nested dicts, naming the offending key on unknown, missing or mistyped values."""
    if not dataclasses.is_dataclass(cls):
        return _coerce(cls, data, where)
    if not isinstance(data, dict):
        raise ValueError(f"thresholds: '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"thresholds: unknown key(s) {[f'{where}.{k}'.lstrip('.') for k in unknown]}; "
                         f"known under '{where or 'top level'}': {sorted(names)}")
    missing = sorted(names - set(data))
    if missing:
        raise ValueError(f"thresholds: missing key(s) {[f'{where}.{k}'.lstrip('.') for k in missing]}")
    return cls(**{k: _build(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in data.items()})


def _validate(thresholds: Thresholds) -> Thresholds:
    """Settings that parse but cannot run: a drift method for another kind of column, empty samples.

    Caught here, before any window is read or labelled, each naming its key."""
    for key, kind in CHECK_KINDS.items():
        method = getattr(thresholds, key).method
        if method not in DRIFT_METHODS:
            raise ValueError(f"thresholds: '{key}.method': unknown drift method '{method}'; expected one of "
                             f"{sorted(DRIFT_METHODS)}")
        kinds = DRIFT_METHODS[method][1]
        if kind not in kinds:
            shown = sorted(k if k != BINARY else "two-valued categorical" for k in kinds
                           if k != BINARY or CATEGORICAL not in kinds)
            fitting = sorted(m for m, (_, k) in DRIFT_METHODS.items() if kind in k)
            raise ValueError(f"thresholds: '{key}.method': {method} applies to {' or '.join(shown)} columns "
                             f"but {key} checks {kind} columns; use one of {fitting}")
    if thresholds.text_drift.sample_size < 1:
        raise ValueError(f"thresholds: 'text_drift.sample_size' must be >= 1, got "
                         f"{thresholds.text_drift.sample_size}")
    return thresholds


def _coerce(kind, value, where: str):
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"thresholds: '{where}' must be true or false, got {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"thresholds: '{where}' must be a number, got {value!r}")
        return kind(value)
    if kind is str and not isinstance(value, str):
        raise ValueError(f"thresholds: '{where}' must be a string, got {value!r}")
    return value


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_assignment(text: str) -> dict:
    """'agreement.mae_max=0.3' -> {'agreement': {'mae_max': 0.3}} (the value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"threshold override '{text}' is not KEY=VALUE (e.g. agreement.mae_max=0.3)")
    value = yaml.safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_thresholds(source: str | Path | dict | Thresholds | None = None,
                    overrides: list[str] | None = None) -> Thresholds:
    """Defaults from thresholds.yaml, then `source` (a partial YAML file, local or gs://, or a dict),
    then `overrides` ('KEY=VALUE' strings)."""
    if isinstance(source, Thresholds) and not overrides:
        return _validate(source)
    data = yaml.safe_load(DEFAULTS_FILE.read_text())
    if isinstance(source, Thresholds):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = _merge(data, source)
    elif source is not None:
        try:
            loaded = yaml.safe_load(storage.read_text(str(source))) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{source}: not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ValueError(f"{source}: a thresholds file must hold a mapping, got {type(loaded).__name__}")
        data = _merge(data, loaded)
    for text in overrides or []:
        data = _merge(data, parse_assignment(text))
    return _validate(_build(Thresholds, data, ""))
