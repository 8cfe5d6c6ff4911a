# The five Synergos Python images, one target each, built from one shared base:
#
#   docker build -f docker/python.Dockerfile --target synergos_worker -t synergos_worker:v0.1.0 .
#
# targets: synergos_director, synergos_ttp, synergos_ttp_cluster, synergos_worker, synergos_mlops.
# Build from the repository root (the context needs pyproject.toml, README.md, src/ and docker/).
# Each image's ENTRYPOINT is its console script, so the deployment guide's flags go after the
# image name unchanged; the default CMD holds the guide's flags for that service.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtualenv with torch (CPU wheel) first, then the synergos package ----
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch before the package and from the CPU index: resolved from PyPI it would pull the CUDA
# wheels (gigabytes). The package's own `torch==X` pin is then already satisfied by `X+cpu`.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

# ---- runtime: the virtualenv, a non-root user and the health probe; no compilers, no sources ----
FROM ${PYTHON_IMAGE} AS runtime
ARG USER_ID=10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SYNERGOS_HOST=0.0.0.0
RUN groupadd --system --gid "${USER_ID}" synergos \
 && useradd --system --uid "${USER_ID}" --gid synergos --create-home --home-dir /home/synergos \
            --shell /usr/sbin/nologin synergos
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/bin/synergos-healthcheck
WORKDIR /home/synergos

# ---- one target per image: its container paths (created before VOLUME, owned by synergos),
#      ports, health probe, console script and the guide's flags. /<role>/credentials is where
#      the operator mounts the service's folder from synergos-provision (read-only; key.pem
#      readable by uid USER_ID); the service refuses to start without it unless --insecure ----
FROM runtime AS synergos_director
RUN install -d -o synergos -g synergos /director/credentials /director/data /director/outputs /director/mlflow
VOLUME ["/director/data", "/director/outputs", "/director/mlflow"]
EXPOSE 5000
USER synergos
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/synergos-healthcheck", "http://127.0.0.1:5000/health", "/director/credentials"]
ENTRYPOINT ["synergos-director"]
CMD ["--id", "director", "--logging_variant", "basic"]

FROM runtime AS synergos_ttp
RUN install -d -o synergos -g synergos /ttp/credentials /ttp/data /ttp/outputs /ttp/mlflow
VOLUME ["/ttp/data", "/ttp/outputs", "/ttp/mlflow"]
EXPOSE 5000
USER synergos
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/synergos-healthcheck", "http://127.0.0.1:5000/health", "/ttp/credentials"]
ENTRYPOINT ["synergos-ttp"]
CMD ["--id", "ttp", "--logging_variant", "basic"]

# The cluster TTP is the same program with --queue: it consumes jobs from the Synergos MQ. The
# default names the MQ container `mq`, as the guide and compose.yaml call it.
FROM synergos_ttp AS synergos_ttp_cluster
CMD ["--id", "ttp", "--logging_variant", "basic", "--queue", "rabbitmq", "mq", "5672", "--censored"]

FROM runtime AS synergos_worker
RUN install -d -o synergos -g synergos /worker/credentials /worker/data /worker/outputs
VOLUME ["/worker/data", "/worker/outputs"]
# 5000: REST commands (f_port); 8020: federation WebSocket (port)
EXPOSE 5000 8020
USER synergos
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/synergos-healthcheck", "http://127.0.0.1:5000/health", "/worker/credentials"]
ENTRYPOINT ["synergos-worker"]
CMD ["--id", "worker", "--logging_variant", "basic", "--censored"]

FROM runtime AS synergos_mlops
RUN install -d -o synergos -g synergos /mlflow
VOLUME ["/mlflow"]
EXPOSE 5500
USER synergos
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/synergos-healthcheck", "http://127.0.0.1:5500/"]
ENTRYPOINT ["synergos-mlops"]
CMD ["--id", "mlops", "--logging_variant", "basic"]
