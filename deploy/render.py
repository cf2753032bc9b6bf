#!/usr/bin/env python3
"""Render a Kustomize directory offline, without kubectl or kustomize: the subset of Kustomize
that deploy/k8s uses, with Kustomize's semantics, and an error for anything else.

    python deploy/render.py deploy/k8s/overlays/cluster > cluster.yaml

Supported (what the overlays use) -- everything else in a kustomization is an error, so an overlay
cannot silently depend on a feature rendered differently here than by ``kubectl apply -k``:

* ``resources``: YAML files (several documents each) and directories holding a kustomization;
* ``components`` (``kind: Component``): their resources, generators and patches are applied to
  the including kustomization's resources, in order, after its ``resources``;
* ``secretGenerator`` / ``configMapGenerator`` with ``envs`` files (Kustomize's env-file rules)
  and ``literals``, ``type`` for Secrets, and ``generatorOptions.disableNameSuffixHash: true``
  (no hash suffix: the hash and its name-reference rewriting are not implemented);
* ``patches``: a file holding either a strategic-merge patch (objects; target from the patch's
  own kind and name, or ``target``) or a JSON 6902 patch (a list of operations; ``target``
  required; ``add``/``remove``/``replace``). Strategic merge merges maps, deletes keys set to
  ``null``, and merges the lists Kubernetes merges by key (containers, initContainers, env and
  volumes by name, volumeMounts by mountPath); other lists of built-in kinds are replaced when
  Kubernetes replaces them (command, args, tolerations...) and refused otherwise; lists in
  custom resources are replaced (they have no schema);
* ``namespace`` (namespaced kinds only) and ``labels`` with ``includeSelectors: false`` and
  ``includeTemplates: false`` (metadata.labels of every object).

Order of transformations per kustomization, as Kustomize: resources, components, generators,
then patches, namespace, labels. Output order: Kustomize's default (legacy) order by kind, then
group/version/kind, namespace and name. Files must lie inside the kustomization's folder (the
default load restrictor), except resources and components, which are directories.
"""

from __future__ import annotations

import base64
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "resources", "components", "namespace", "labels", "patches",
    "secretGenerator", "configMapGenerator", "generatorOptions",
}
_GENERATOR_KEYS = {"name", "envs", "literals", "type"}
# Kustomize's legacy order (api/resid/gvk.go): these kinds first, in this order, then any other
# kind, then the webhook configurations.
_ORDER_FIRST = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap",
    "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume",
    "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget",
]
_ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
_CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "APIService", "PodSecurityPolicy",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "IngressClass",
    "RuntimeClass", "CSIDriver", "VolumeAttachment",
}
# Strategic merge: list fields merged by key in built-in kinds, and list fields Kubernetes
# replaces whole (no patch strategy). Any other list in a built-in kind is refused.
_MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
    "volumeMounts": "mountPath",
}
_REPLACED_LISTS = {"command", "args", "tolerations", "accessModes", "envFrom", "drop", "add"}
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class RenderError(Exception):
    """The directory uses something this renderer does not support, or is wrong."""


def render(path: str | Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize PATH`` would print, in its order."""
    return sort_objects(_build(Path(path).resolve(), component=False))


def dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def sort_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objects, key=_legacy_key)


# -- kustomizations ----------------------------------------------------------------------------


def _kustomization(folder: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        file = folder / name
        if file.is_file():
            data = yaml.safe_load(file.read_text()) or {}
            unknown = set(data) - _KUSTOMIZATION_KEYS
            if unknown:
                raise RenderError(f"{file}: unsupported field(s) {sorted(unknown)}")
            return data
    raise RenderError(f"{folder} has no kustomization.yaml")


def _build(folder: Path, component: bool, objects: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    k = _kustomization(folder)
    kind = k.get("kind", "Kustomization")
    if component != (kind == "Component"):
        raise RenderError(f"{folder}: kind {kind} where a {'Component' if component else 'Kustomization'} is expected")
    objects = [] if objects is None else objects
    for entry in k.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            _add(objects, _build(target, component=False), target)
        else:
            _inside(folder, target, "resource")
            _add(objects, _load_objects(target), target)
    for entry in k.get("components", []):
        objects = _build((folder / entry).resolve(), component=True, objects=objects)
    options = k.get("generatorOptions")
    generators = k.get("secretGenerator") or k.get("configMapGenerator")
    if (generators or options is not None) and options != {"disableNameSuffixHash": True}:
        raise RenderError(f"{folder}: generators need generatorOptions: {{disableNameSuffixHash: true}} and nothing else")
    for field, kind_ in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for spec in k.get(field, []):
            _add(objects, [_generate(folder, kind_, spec)], folder)
    for patch in k.get("patches", []):
        _apply_patch(folder, patch, objects)
    namespace = k.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace
    for entry in k.get("labels", []):
        if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or entry.get("includeSelectors") or entry.get(
            "includeTemplates"
        ):
            raise RenderError(f"{folder}: labels supports only pairs with includeSelectors/includeTemplates false")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update({str(a): str(b) for a, b in entry["pairs"].items()})
    return objects


def _inside(folder: Path, file: Path, what: str) -> None:
    if not file.resolve().is_relative_to(folder):
        raise RenderError(f"{what} {file} is outside {folder} (Kustomize's load restrictor refuses it)")
    if not file.is_file():
        raise RenderError(f"{what} {file} does not exist")


def _load_objects(file: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or not d.get("kind") or not d.get("apiVersion") or not d.get("metadata", {}).get("name"):
            raise RenderError(f"{file}: every document needs apiVersion, kind and metadata.name")
    return docs


def _ident(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    group = obj["apiVersion"].rpartition("/")[0]
    return group, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _add(objects: list[dict[str, Any]], new: list[dict[str, Any]], source: Path) -> None:
    seen = {_ident(o) for o in objects}
    for obj in new:
        if _ident(obj) in seen:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            raise RenderError(f"{source}: {name} is already defined (Kustomize refuses duplicates)")
        seen.add(_ident(obj))
        objects.append(obj)


# -- generators --------------------------------------------------------------------------------


def parse_env_file(text: str, where: str = "env file") -> dict[str, str]:
    """Kustomize's env-file rules: leading whitespace trimmed, blank and ``#`` lines skipped,
    ``KEY=VALUE`` split at the first ``=``, the value taken verbatim (no unquoting, trailing
    spaces kept). A line without ``=`` would take the value from the renderer's environment in
    Kustomize; it is refused here."""
    values: dict[str, str] = {}
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip("\ufeff") if i == 1 else raw
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise RenderError(f"{where}:{i}: {key!r} has no '=' (its value would come from the environment)")
        if not _ENV_NAME.match(key):
            raise RenderError(f"{where}:{i}: {key!r} is not a valid variable name")
        values[key] = value
    return values


def _generate(folder: Path, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    unknown = set(spec) - _GENERATOR_KEYS
    if unknown or (kind == "ConfigMap" and "type" in spec):
        raise RenderError(f"{folder}: unsupported generator field(s) {sorted(unknown)}")
    values: dict[str, str] = {}
    for env in spec.get("envs", []):
        file = (folder / env).resolve()
        _inside(folder, file, "env file")
        values.update(parse_env_file(file.read_text(), str(file)))
    for literal in spec.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise RenderError(f"{folder}: literal {literal!r} needs KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    else:
        obj["data"] = values
    return obj


# -- patches -----------------------------------------------------------------------------------


def _apply_patch(folder: Path, patch: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    if set(patch) - {"path", "target"}:
        raise RenderError(f"{folder}: patches support path and target only, got {sorted(patch)}")
    file = (folder / patch["path"]).resolve()
    _inside(folder, file, "patch")
    docs = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
    target = patch.get("target")
    if target and set(target) - {"kind", "name", "group", "version"}:
        raise RenderError(f"{file}: target supports kind, name, group and version only")
    if len(docs) == 1 and isinstance(docs[0], list):
        if not target:
            raise RenderError(f"{file}: a JSON 6902 patch needs a target")
        for obj in _matches(objects, target, file):
            for op in docs[0]:
                _json6902(obj, op, file)
        return
    for doc in docs:
        if not isinstance(doc, dict):
            raise RenderError(f"{file}: a strategic-merge patch is a Kubernetes object")
        want = target or {"kind": doc.get("kind"), "name": doc.get("metadata", {}).get("name")}
        for obj in _matches(objects, want, file):
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
            body["metadata"] = {k: v for k, v in doc.get("metadata", {}).items() if k not in ("name", "namespace")}
            if not body["metadata"]:
                del body["metadata"]
            merged = strategic_merge(obj, body, builtin=is_builtin(obj))
            obj.clear()
            obj.update(merged)


def _matches(objects: list[dict[str, Any]], target: dict[str, Any], file: Path) -> list[dict[str, Any]]:
    found = []
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        if target.get("kind") and obj["kind"] != target["kind"]:
            continue
        if target.get("name") and obj["metadata"]["name"] != target["name"]:
            continue
        if "group" in target and group != target["group"]:
            continue
        if "version" in target and version != target["version"]:
            continue
        found.append(obj)
    if not found:
        raise RenderError(f"{file}: no resource matches {target} (Kustomize fails the build)")
    return found


def is_builtin(obj: dict[str, Any]) -> bool:
    """A kind of Kubernetes itself (core or a *.k8s.io group), whose schema gives merge keys."""
    group = obj["apiVersion"].rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def strategic_merge(base: Any, patch: Any, builtin: bool, field: str = "") -> Any:
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise RenderError(f"strategic-merge directive {key} is not supported")
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value, builtin, key)
        elif isinstance(value, list) and builtin and key in _MERGE_KEYS and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, _MERGE_KEYS[key], builtin)
        elif isinstance(value, list) and builtin and key not in _REPLACED_LISTS and key not in _MERGE_KEYS:
            raise RenderError(f"strategic merge of the list {key!r} (under {field or 'the object'}) is not supported")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(base: list[Any], patch: list[Any], key: str, builtin: bool) -> list[Any]:
    out = copy.deepcopy(base)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise RenderError(f"strategic merge: list item without its merge key {key!r}: {item!r}")
        for i, existing in enumerate(out):
            if isinstance(existing, dict) and existing.get(key) == item[key]:
                out[i] = strategic_merge(existing, item, builtin)
                break
        else:
            out.append(copy.deepcopy(item))
    return out


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _json6902(obj: dict[str, Any], op: dict[str, Any], file: Path) -> None:
    kind = op.get("op")
    if kind not in ("add", "remove", "replace"):
        raise RenderError(f"{file}: JSON 6902 op {kind!r} is not supported")
    parts = _pointer(op["path"])
    node: Any = obj
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError):
            raise RenderError(f"{file}: path {op['path']} does not exist in {obj['kind']}/{obj['metadata']['name']}") from None
    last = parts[-1]
    if isinstance(node, list):
        if kind == "add" and last == "-":
            node.append(copy.deepcopy(op["value"]))
            return
        try:
            index = int(last)
        except ValueError:
            raise RenderError(f"{file}: {op['path']}: {last!r} is not a list index") from None
        if kind == "add":
            if not 0 <= index <= len(node):
                raise RenderError(f"{file}: {op['path']}: index out of range")
            node.insert(index, copy.deepcopy(op["value"]))
        elif not 0 <= index < len(node):
            raise RenderError(f"{file}: {op['path']}: index out of range")
        elif kind == "remove":
            del node[index]
        else:
            node[index] = copy.deepcopy(op["value"])
        return
    if not isinstance(node, dict):
        raise RenderError(f"{file}: {op['path']}: parent is not an object or a list")
    if kind in ("remove", "replace") and last not in node:
        raise RenderError(f"{file}: {op['path']} does not exist in {obj['kind']}/{obj['metadata']['name']}")
    if kind == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(op["value"])


# -- order -------------------------------------------------------------------------------------


def _legacy_key(obj: dict[str, Any]) -> tuple[int, str, str, str]:
    kind = obj["kind"]
    if kind in _ORDER_FIRST:
        rank = _ORDER_FIRST.index(kind) - len(_ORDER_FIRST)
    elif kind in _ORDER_LAST:
        rank = 1 + _ORDER_LAST.index(kind)
    else:
        rank = 0
    group, _, version = obj["apiVersion"].rpartition("/")
    gvk = "_".join((group or "~G", version or "~V", kind))
    return rank, gvk, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: render.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(dump(render(args[0])))
    except RenderError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
