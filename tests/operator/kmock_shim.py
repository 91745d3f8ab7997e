"""A kmock Kubernetes emulator with the API-server behaviours kopf and the operator need.

kmock (pinned) emulates a stateful Kubernetes API in-process. It lacks a few
things a real API server does and that kopf or kubernetes clients rely on;
:class:`Emulator` adds the smallest possible shim, for tests only:

* resourceVersion/uid/creationTimestamp on every write (kopf changes
  finalizers with a JSON patch that tests ``metadata.resourceVersion``);
* a 422 instead of a 500 when such a test op fails (kopf then retries on the
  next event instead of throttling);
* ``generateName`` (kopf posts every Event with it);
* a real ``/scale`` view of Deployments (kmock would merge a Scale body into
  the Deployment and return the whole Deployment on GET);
* 415 for a dict body sent as a JSON patch, as a real API server answers;
* 422 for a WorkerAutoscaler status write the shipped CRD's schema rejects
  (e.g. a condition type outside its enum), as a real API server answers:
  without it a status the cluster refuses would pass every test here.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import uuid
from pathlib import Path
from typing import Any

import jsonpatch
import jsonpointer
import jsonschema
import kmock
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "charts/resonate-patterns/crds/workerautoscalers.yaml"

GROUP, VERSION, PLURAL = "resonate-patterns.io", "v1alpha1", "workerautoscalers"
WA = f"{GROUP}/{VERSION}/{PLURAL}"
DEPLOYMENTS = "apps/v1/deployments"
EVENTS = "v1/events"
NS = "ns1"
ALL_VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


# ---------------------------------------------------------------------------
# The shim: the smallest additions to kmock's emulator for kopf & real clients.
# ---------------------------------------------------------------------------

_versions = itertools.count(1)  # one global, monotonic resourceVersion sequence
_suffixes = itertools.count(1)  # deterministic generateName suffixes


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server behaviours these tests depend on.

    kmock applies writes *before* any reaction runs (in ``_handle``), storing the
    request body as is.  Rewriting the parsed request body in place right before
    that is therefore enough to change what gets stored and streamed to watchers.
    """

    async def _handle(self, request: kmock.Request) -> Any:
        data = request.data
        if request.resource is not None and request.action == kmock.action.CREATE:
            meta = data.setdefault("metadata", {})
            # generateName: kopf posts every k8s Event with generateName only; without
            # this every Event would be stored under name=None and the 2nd one gets 409.
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(_suffixes):05d}"
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = str(next(_versions))
        elif request.resource is not None and request.action == kmock.action.UPDATE:
            content_type = request.headers.get("Content-Type", "")
            if (
                request.resource.group == GROUP
                and request.resource.plural == PLURAL
                and request.subresource == "status"
                and isinstance(data, dict)
            ):
                problems = status_problems(data.get("status"))
                if problems:
                    raise kmock.KubernetesError(422, "Invalid", "; ".join(problems))
            if isinstance(data, dict) and "json-patch" in content_type:
                # A real API server rejects this; kubernetes_asyncio's CustomObjectsApi does
                # exactly this for dict bodies unless _content_type= is passed.
                raise kmock.KubernetesError(415, "UnsupportedMediaType", "dict body as json-patch")
            if request.subresource == "scale" and isinstance(data, dict):
                # Only spec.replicas of a Scale maps onto the Deployment (like the real /scale).
                replicas = (data.get("spec") or {}).get("replicas")
                data.clear()
                data.update({"spec": {"replicas": replicas}} if replicas is not None else {})
            # resourceVersion: kopf removes a finalizer (e.g. an older operator's) with a JSON-patch
            # that starts with {"op": "test", "path": "/metadata/resourceVersion"}; kmock has no
            # resourceVersion, so that op fails (HTTP 500), kopf retries and throttles, and the
            # finalizer never goes.  A fresh version on every write also lets kopf see changes.
            version = str(next(_versions))
            if isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                if isinstance(meta, dict):
                    meta["resourceVersion"] = version
            elif isinstance(data, list):
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            # kopf's optimistic-concurrency "test" op lost a race (e.g. with the daemon's own
            # status patch): the API server says 422, on which kopf retries on the next event.
            # kmock would answer 500, on which kopf retries the request and then throttles.
            raise kmock.KubernetesError(422, "Invalid", str(e)) from e

    def serve_scale(self, request: kmock.Request) -> dict[str, Any]:
        """Render GET/PATCH ``deployments/{name}/scale`` as an autoscaling/v1 Scale."""
        try:
            dep = self.objects[DEPLOYMENTS, request.namespace, request.name].raw
        except (KeyError, ValueError):  # never created / soft-deleted
            raise kmock.KubernetesObjectNotFoundError() from None
        meta = dep.get("metadata", {})
        labels = (dep.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": dep.get("spec", {}).get("replicas", 1)},
            "status": {
                "replicas": dep.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            },
        }


@functools.cache
def _status_validator() -> jsonschema.protocols.Validator:
    crd = yaml.safe_load(CRD_PATH.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return jsonschema.Draft7Validator(schema)  # type, enum, required, items: what is used


def _drop_nulls(value: Any) -> Any:
    """A merge patch's ``null`` deletes the field: it is never stored or validated."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def status_problems(status: Any) -> list[str]:
    """Why the shipped CRD's schema rejects this status merge patch (empty: it accepts)."""
    if status is None:
        return []
    return [
        f"status.{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in _status_validator().iter_errors(_drop_nulls(status))
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def register_crd(emulator: kmock.KubernetesEmulator, path: Path) -> str:
    """Declare a CRD's served versions in kmock's discovery (what kopf's scan reads)."""
    crd = yaml.safe_load(path.read_text())
    spec, names = crd["spec"], crd["spec"]["names"]
    for ver in spec["versions"]:
        if ver.get("served", True):
            key = f"{spec['group']}/{ver['name']}/{names['plural']}"
            emulator.resources[key] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec["scope"] == "Namespaced",
                shortnames=names.get("shortNames", []),
                categories=names.get("categories", []),
                subresources=list(ver.get("subresources") or {}),
                verbs=ALL_VERBS,
            )
    return str(crd["metadata"]["name"])


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    """Discovery for everything kopf and the operator touch, and the /scale view."""
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs=ALL_VERBS
    )
    emulator.resources[EVENTS] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=ALL_VERBS)
    emulator.resources[DEPLOYMENTS] = kmock.ResourceInfo(
        kind="Deployment", namespaced=True, verbs=ALL_VERBS, subresources={"scale", "status"}
    )
    register_crd(emulator, CRD_PATH)
    assert isinstance(emulator, Emulator)
    emulator[emulator.resource(DEPLOYMENTS), emulator.subresource("scale")] << emulator.serve_scale
