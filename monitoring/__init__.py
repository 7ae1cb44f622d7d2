"""Drift monitoring of the served student: reference set, teacher agreement and drift report, thresholds.

`monitoring.reference` builds the reference set after training; `monitoring.job.monitor` checks a window
of logged requests against it (sample -> teacher labels -> Evidently report -> HTML + JSON + exit
status); thresholds live in `thresholds.yaml`. Evidently and kfp are imported lazily.
"""
