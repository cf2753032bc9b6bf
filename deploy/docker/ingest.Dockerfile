# syntax=docker/dockerfile:1
# Ingest on Ray: the Ray head and GPU workers of the KubeRay RayCluster (and the RayJob that runs
# `spr ingest`), or a single-node Job with a local Ray. Build from the repository root:
#   docker build -f deploy/docker/ingest.Dockerfile -t registry.example.com/spr/spr-ingest:0.1.0 .
# Ray's own image, pinned to the Ray of pyproject.toml (ray==2.60.0), Python 3.11, CUDA: its
# Python lives under /home/ray/anaconda3 and its user is `ray` (uid 1000, gid 100).

FROM rayproject/ray:2.60.0-py311-gpu
# torch first, pinned, the CUDA build (it also runs on CPU nodes); torchvision from the same
# index. Then, as `ray`, a source folder it owns (pip builds in the source tree; removed below).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 torchvision==0.28.0 \
    && mkdir /home/ray/spr-src
WORKDIR /home/ray/spr-src
COPY --chown=1000:100 deploy/docker/constraints.txt ./constraints.txt
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 spr ./spr
COPY --chown=1000:100 services ./services
COPY --chown=1000:100 ingest ./ingest
COPY --chown=1000:100 refiner ./refiner
# The project (pins from pyproject.toml, every other version from constraints.txt, which also
# holds ray==2.60.0 as installed) and s3fs for manifests and frame features in object storage.
RUN pip install --no-cache-dir --constraint constraints.txt . s3fs==2026.9.0 \
    && rm -rf /home/ray/spr-src
COPY deploy/docker/stage_manifest.py deploy/docker/grpc_health_check.py /opt/spr/bin/
WORKDIR /home/ray
ENV PYTHONUNBUFFERED=1
USER 1000:100
# Ray's dashboard / job API, GCS, client; Prometheus /metrics of `spr ingest` (metrics.ingest_port).
EXPOSE 8265 6379 10001 9466
# Meaningful where the container runs a Ray node (KubeRay sets its own probes on Kubernetes,
# which ignores Docker health checks).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["ray", "health-check"]
CMD ["spr", "--help"]
