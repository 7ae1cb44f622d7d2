"""Kubeflow Pipelines components: one module per step, each a thin `@dsl.component` over an engine function.

A component only unpacks its artifacts, resolves the run profile and calls the plain function of its step;
`pipelines.training` wires them into the training pipeline. Importing this package imports nothing heavy.
"""
