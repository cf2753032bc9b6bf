# syntax=docker/dockerfile:1
# The web gateway: `spr web`, the page and its HTTP/JSON API, a gRPC client of the search
# service (web.target). No torch, model, catalog or vector store: the project is installed
# without its dependencies, then only what the gateway imports (web-requirements.txt), so the
# image stays small. Build from the repository root:
#   docker build -f deploy/docker/web.Dockerfile -t registry.example.com/spr/spr-web:0.1.0 .
# web.Dockerfile.dockerignore (beside this file) keeps the context to the package sources.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/spr/venv/bin:$PATH
WORKDIR /src
COPY deploy/docker/constraints.txt deploy/docker/web-requirements.txt /src/
COPY pyproject.toml README.md /src/
# Every package folder: the wheel holds all of spr (the stages are plain sources); only the
# web gateway's imports are installed.
COPY spr /src/spr
COPY services /src/services
COPY ingest /src/ingest
COPY refiner /src/refiner
RUN python -m venv /opt/spr/venv \
    && pip install --no-cache-dir --no-deps /src \
    && pip install --no-cache-dir --constraint /src/constraints.txt --requirement /src/web-requirements.txt

FROM python:3.11.11-slim-bookworm
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/spr --shell /usr/sbin/nologin spr
COPY --from=build /opt/spr/venv /opt/spr/venv
COPY deploy/docker/http_health_check.py /opt/spr/bin/
# SPR_* variables are configuration keys (spr/config.py); a container listens on all
# interfaces. The search service's address is web.target (SPR_WEB__TARGET or --target).
ENV PATH=/opt/spr/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/spr \
    SPR_WEB__HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/spr
# HTTP (web.port).
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "/opt/spr/bin/http_health_check.py"]
ENTRYPOINT ["spr"]
CMD ["web"]
