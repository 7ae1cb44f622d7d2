"""Serving the student: ONNX export and Triton model repository, the local Triton launcher, the rerank client.

`serving.export` writes the repository, `serving.server` starts the tritonserver bundled with
nvidia-pytriton on it, `serving.client` sends rerank requests and `serving.requestlog` records them
for monitoring. Heavy dependencies (torch, tritonclient, google-cloud-storage) load lazily.
"""
