# syntax=docker/dockerfile:1
# The refiner (spr.v1.RefinerService) on a GPU: CUDA build of torch 2.13.0. Build from the
# repository root:
#   docker build -f deploy/docker/refiner.Dockerfile -t registry.example.com/spr/spr-refiner:0.1.0 .
# The CUDA wheel of torch brings its own CUDA runtime libraries; the nvidia/cuda base supplies
# the NVIDIA container-toolkit settings (NVIDIA_VISIBLE_DEVICES, driver capabilities) and
# documents the CUDA version the wheels are built for. The node's driver must support CUDA 12.8.
# Python 3.11 exactly (pyproject.toml) comes from uv's standalone builds: Ubuntu 24.04 ships 3.12.

FROM ghcr.io/astral-sh/uv:0.6.14 AS uv

FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/spr/python \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    VIRTUAL_ENV=/opt/spr/venv \
    PATH=/opt/spr/venv/bin:$PATH
RUN uv python install 3.11.11 && uv venv --python 3.11.11 /opt/spr/venv
# torch first, pinned, the CUDA build (docs/install.md, "GPU hosts"); torchvision from the same
# index. Another CUDA line: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN uv pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 torchvision==0.28.0
WORKDIR /src
COPY deploy/docker/constraints.txt /src/constraints.txt
COPY pyproject.toml README.md /src/
COPY spr /src/spr
COPY services /src/services
COPY ingest /src/ingest
COPY refiner /src/refiner
# The project (pins from pyproject.toml, the rest from constraints.txt) and s3fs for a frame-feature
# store in object storage (features.url = s3://...). The refiner does not use Faiss.
RUN uv pip install --constraint /src/constraints.txt /src s3fs==2026.9.0

FROM nvidia/cuda:12.8.1-base-ubuntu24.04
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/spr --shell /usr/sbin/nologin spr \
    && mkdir -p /var/lib/spr && chown 10001:10001 /var/lib/spr
COPY --from=build /opt/spr /opt/spr
COPY deploy/docker/grpc_health_check.py deploy/docker/serve_refiner.py /opt/spr/bin/
ENV PATH=/opt/spr/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/spr \
    SPR_DATA_DIR=/var/lib/spr \
    SPR_SERVICES__HOST=0.0.0.0 \
    SPR_METRICS__HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/spr
# gRPC (services.refiner_port) and Prometheus /metrics (metrics.refiner_port).
EXPOSE 50052 9465
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/spr/bin/grpc_health_check.py", "refiner"]
# The refiner alone (`spr serve` would start the search service too).
ENTRYPOINT ["python", "/opt/spr/bin/serve_refiner.py"]
