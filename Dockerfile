# syntax=docker/dockerfile:1
#
# Two images from one file (the Helm chart's image.repository and worker.image.repository):
#
#   docker build --target operator -t model-operator:0.1.0 .
#   docker build --target worker   -t model-operator-worker:0.1.0 \
#       --build-arg TORCH_INDEX_URL=<PyTorch's CPU-only wheel index> .
#
# operator: `model-operator run` (kopf) with the base dependencies only: no torch, no ONNX.
# worker:   the optimization Jobs (`model-operator optimize`), the Triton pods' init container
#           (`assemble`), the golden probe (`probe`) and artifact cleanup (`artifacts`), with the
#           [worker] extra: PyTorch (CPU), ONNX, ONNX Runtime, scikit-learn, boto3, tritonclient.
#
# Every dependency installs from wheels, so no stage needs a compiler; the final stages copy a
# finished virtual environment onto the plain base image and run as UID 1000.
# Without TORCH_INDEX_URL, torch comes from the default index, which on x86_64 is the CUDA build
# (several GB larger); pass the CPU-only index to get the slim CPU worker.
#
# Layers are ordered so that a change to the project's source rebuilds and ships only the last,
# small layer of each image: the venv stages hold torch (depends on TORCH_VERSION only) and the
# dependencies named in pyproject.toml, never the source; the final stages copy that venv, then
# install the project's wheel from the build stage with --no-index: its dependencies are all
# there already. Downloads go through a
# build cache mount (/var/cache/wheels), so a rebuild after a pyproject change does not download
# torch again.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: the project's wheel --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- venv: an empty virtual environment ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv

# ---- the operator's virtual environment: the base dependencies only ---------------------------
FROM venv AS operator-venv
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=cache,id=model-operator-wheels,target=/var/cache/wheels,sharing=locked \
    python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + [d for e in sys.argv[1:] for d in p["optional-dependencies"][e]]))' > /tmp/requirements.txt \
 && /opt/venv/bin/pip download --dest /var/cache/wheels -r /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-index --find-links /var/cache/wheels -r /tmp/requirements.txt

# ---- the worker's virtual environment: torch first, then the [worker] dependencies ------------
FROM venv AS worker-venv
ARG TORCH_VERSION=2.15.0
ARG TORCH_INDEX_URL=
RUN --mount=type=cache,id=model-operator-wheels,target=/var/cache/wheels,sharing=locked \
    /opt/venv/bin/pip download --dest /var/cache/wheels \
        ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} "torch==${TORCH_VERSION}" \
 && /opt/venv/bin/pip install --no-index --find-links /var/cache/wheels "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=cache,id=model-operator-wheels,target=/var/cache/wheels,sharing=locked \
    python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + [d for e in sys.argv[1:] for d in p["optional-dependencies"][e]]))' worker > /tmp/requirements.txt \
 && /opt/venv/bin/pip download --dest /var/cache/wheels ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        -r /tmp/requirements.txt "torch==${TORCH_VERSION}" \
 && /opt/venv/bin/pip install --no-index --find-links /var/cache/wheels -r /tmp/requirements.txt "torch==${TORCH_VERSION}"

# ---- runtime: the plain base image, an unprivileged user, no build tools ----------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 1000 model-operator \
 && useradd --system --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin model-operator
# HOME and the working directory are /tmp: the pods mount a writable emptyDir there and keep the
# root filesystem read-only.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
LABEL org.opencontainers.image.title="model-operator" \
      org.opencontainers.image.licenses="Apache-2.0"

# ---- worker image -----------------------------------------------------------------------------
FROM runtime AS worker
COPY --from=worker-venv /opt/venv /opt/venv
COPY --from=build /wheels /wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-index "$(ls /wheels/model_operator-*.whl)[worker]" \
 && rm -rf /wheels
USER 1000:1000
ENTRYPOINT ["model-operator"]
CMD ["--help"]

# ---- operator image (the default target) ------------------------------------------------------
FROM runtime AS operator
COPY --from=operator-venv /opt/venv /opt/venv
COPY --from=build /wheels /wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-index /wheels/model_operator-*.whl \
 && rm -rf /wheels
USER 1000:1000
# 8080: kopf's liveness endpoint; 9090: the operator's Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["model-operator"]
CMD ["run", "--liveness", "http://0.0.0.0:8080/healthz"]
