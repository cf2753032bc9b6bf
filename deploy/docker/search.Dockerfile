# syntax=docker/dockerfile:1
# The search service: `spr serve` on CPU (CLIP text tower, ANN top-k, catalog, proposals), the
# refiner reached at services.refiner_target. Build from the repository root:
#   docker build -f deploy/docker/search.Dockerfile -t registry.example.com/spr/spr-search:0.1.0 .
# search.Dockerfile.dockerignore (beside this file) keeps the context to the package sources.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/spr/venv/bin:$PATH
# torch first, pinned (pyproject.toml and docs/install.md): the CPU build from PyTorch's CPU
# index, and torchvision from the same index so its C++ extension matches that torch.
RUN python -m venv /opt/spr/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        torch==2.13.0 torchvision==0.28.0
WORKDIR /src
COPY deploy/docker/constraints.txt /src/constraints.txt
COPY pyproject.toml README.md /src/
COPY spr /src/spr
COPY services /src/services
COPY ingest /src/ingest
COPY refiner /src/refiner
# The project with the pins of pyproject.toml, every other version from constraints.txt, and
# s3fs so that operators' commands run here (`spr delete`) reach features in object storage.
RUN pip install --no-cache-dir --constraint /src/constraints.txt /src s3fs==2026.9.0

FROM python:3.11.11-slim-bookworm
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/spr --shell /usr/sbin/nologin spr \
    && mkdir -p /var/lib/spr && chown 10001:10001 /var/lib/spr
COPY --from=build /opt/spr/venv /opt/spr/venv
COPY deploy/docker/grpc_health_check.py deploy/docker/serve_refiner.py /opt/spr/bin/
# SPR_* variables are configuration keys (spr/config.py); a container listens on all interfaces.
ENV PATH=/opt/spr/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/spr \
    SPR_DATA_DIR=/var/lib/spr \
    SPR_SERVICES__HOST=0.0.0.0 \
    SPR_METRICS__HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/spr
# gRPC (services.search_port) and Prometheus /metrics (metrics.search_port).
EXPOSE 50051 9464
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/opt/spr/bin/grpc_health_check.py", "search"]
ENTRYPOINT ["spr"]
# Without services.refiner_target, serve coarse results rather than start a refiner in-process.
CMD ["serve", "--no-refiner"]
