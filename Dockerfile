# attnserve serving image: ONNX Runtime and the server; no torch, training code or demo weights.
# Build (see docs/deploy.md):
#   docker build -t attnserve .                                 CPU; mount a model repository at /models
#   docker build --build-arg DEMO_MODELS=1 -t attnserve:demo .  the demo models exported and baked in
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg LOCK=gpu -t attnserve:gpu .
# Every Python package comes from the lock (requirements/, see `make lock`), each file's sha256 checked.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG DEMO_MODELS=0

FROM ${BASE_IMAGE} AS python
# CUDA base images carry no Python: take the distribution's (3.11 or later)
# hadolint ignore=DL3008
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

FROM python AS build
# requirements/serve.txt, or gpu.txt: onnxruntime-gpu in place of onnxruntime
ARG LOCK=serve
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY attnserve attnserve
COPY client client
COPY export export
COPY models models
COPY service service
RUN python3 -m venv /opt/attnserve \
    && /opt/attnserve/bin/pip install --no-cache-dir --require-hashes --no-deps -r "requirements/$LOCK.txt" \
    && /opt/attnserve/bin/pip install --no-cache-dir --no-deps --no-build-isolation .

# The model repository baked into the image: empty by default (mount yours at /models); with
# DEMO_MODELS=1 the shipped demo models, exported here with torch (CPU wheels) and attnserve-demo (their
# weights), which stay in this stage
FROM build AS models
ARG DEMO_MODELS
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY demo demo
# hadolint ignore=DL3013
RUN mkdir -p /models \
    && if [ "$DEMO_MODELS" = "1" ]; then \
        /opt/attnserve/bin/pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" \
            --require-hashes --no-deps -r requirements/export.txt \
        && /opt/attnserve/bin/pip install --no-cache-dir --no-deps --no-build-isolation ./demo \
        && /opt/attnserve/bin/attnserve export --demo --repository /models --no-progress; \
    fi

FROM python AS runtime
COPY --from=build /opt/attnserve /opt/attnserve
COPY --from=models /models /models
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin attnserve
USER 10001
ENV PATH=/opt/attnserve/bin:$PATH \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ATTNSERVE_REPOSITORY=/models
# gRPC (vision API, Open Inference Protocol, health, reflection) and Prometheus metrics
EXPOSE 50051 8000 9464
ENTRYPOINT ["attnserve", "serve"]
