# syntax=docker/dockerfile:1
# The ganray image: CUDA PyTorch and ganray, with the console script `ganray` on PATH. One image
# for every ganray container on Kubernetes (k8s/): Ray heads and workers, the RayJob's driver, the
# notice agent, the MLflow server and Ray Serve. Build from the repository root:
#   docker build -t REGISTRY/ganray:0.1.0 .
# BASE_IMAGE: a PyTorch image with Python 3.11 and the torch that constraints.txt pins (any other
# torch would be replaced by pip with the PyPI wheel). Check the tag on hub.docker.com/r/pytorch/pytorch.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

WORKDIR /opt/ganray
COPY pyproject.toml constraints.txt README.md ./
COPY orchestrator ./orchestrator
COPY trainers ./trainers
COPY deploy ./deploy

# ganray with its pins; for the MLflow server also its basic-auth app (mlflow[auth]) and the
# PostgreSQL driver. Then: the Python ganray needs, a CUDA torch, the CLI answers.
RUN python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" \
 && pip install -c constraints.txt . "mlflow[auth]" psycopg2-binary==2.9.13 \
 && python -c "import torch; assert torch.version.cuda, 'torch was built without CUDA'" \
 && ganray --help > /dev/null

# Not root: uid 1000, the user the manifests run as (k8s/base/*.yaml: runAsUser 1000).
RUN useradd --uid 1000 --user-group --create-home --shell /bin/bash ganray
USER 1000
WORKDIR /home/ganray
CMD ["ganray", "--help"]
