"""Kubeflow pipeline definitions (training, monitoring), compile, local run, submit, and the CLI."""
