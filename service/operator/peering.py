"""The kopf peering object the operator's replicas share, created by the operator.

kopf's peering (several replicas, one acting) needs a KopfPeering object in
each watched namespace, or one ClusterKopfPeering for a cluster-wide
operator; kopf itself only patches it. The chart cannot create it: a custom
object rendered in the same release as its CRD fails Helm's first install
("resource mapping not found"), and the CRD is in the release only when
peering is on. So the operator creates its own object at startup, before kopf
starts acting, and :func:`keep_peering` recreates it if it goes away (an
upgrade from chart 0.4.0 deletes the object the chart used to own). A
KopfPeering in the operator's own namespace is owned by the operator's
ServiceAccount, so it goes when the release is uninstalled; it carries the
operator's selector labels, so it lists with the release's other objects.

kopf reads the CRDs once at startup (the operator runs with CRD scanning off),
so :class:`Peering.ensure` failing because the CRD is not served yet keeps the
operator in its startup (not ready) and retried, rather than starting it
paused for good.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubernetes_asyncio import client as k8s

from service.errors import ResonatePatternsError
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from service.operator.kube import ServiceAccountRef

GROUP = "kopf.dev"
VERSION = "v1"

#: Seconds between checks that the peering object still exists.
KEEP_SECONDS = 30.0


class PeeringUnavailableError(ResonatePatternsError):
    """The peering object can neither be read nor created (CRD missing, or no RBAC)."""


@dataclass(frozen=True)
class Peering:
    """Where the replicas meet: ``name`` in each of ``namespaces``, or cluster-wide."""

    name: str
    #: Empty: one ClusterKopfPeering (the operator watches every namespace).
    namespaces: tuple[str, ...] = ()
    #: Labels of the object: the operator's selector (its release's instance label).
    labels: tuple[tuple[str, str], ...] = ()
    #: The operator's ServiceAccount: the owner of a KopfPeering in its own namespace, so
    #: that ``helm uninstall`` (which deletes the account) takes the object with it.
    owner: ServiceAccountRef | None = None

    @property
    def kind(self) -> str:
        return "KopfPeering" if self.namespaces else "ClusterKopfPeering"

    @property
    def plural(self) -> str:
        return "kopfpeerings" if self.namespaces else "clusterkopfpeerings"

    def body(self, namespace: str | None) -> dict[str, object]:
        metadata: dict[str, object] = {"name": self.name}
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if namespace is not None:
            metadata["namespace"] = namespace
            # An owner in another namespace (or of a cluster-scoped object) is one the garbage
            # collector cannot find: it would delete the object at once.
            if self.owner is not None and self.owner.namespace == namespace:
                metadata["ownerReferences"] = [
                    {
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "name": self.owner.name,
                        "uid": self.owner.uid,
                    }
                ]
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": self.kind, "metadata": metadata}

    async def ensure(self, custom: k8s.CustomObjectsApi) -> list[str]:
        """Create each missing object; where one was created ("cluster" or a namespace)."""
        created: list[str] = []
        for namespace in self.namespaces or (None,):
            if await self._ensure_one(custom, namespace):
                created.append(namespace or "cluster")
        return created

    async def _ensure_one(self, custom: k8s.CustomObjectsApi, namespace: str | None) -> bool:
        where = f"in namespace {namespace}" if namespace else "cluster-wide"
        try:
            if namespace is None:
                await custom.get_cluster_custom_object(GROUP, VERSION, self.plural, self.name)
            else:
                await custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, self.plural, self.name
                )
            return False
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise self._unavailable(exc, where) from None
        try:
            if namespace is None:
                await custom.create_cluster_custom_object(
                    GROUP, VERSION, self.plural, self.body(None)
                )
            else:
                await custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, self.plural, self.body(namespace)
                )
        except k8s.ApiException as exc:
            if exc.status == 409:  # another replica created it first
                return False
            raise self._unavailable(exc, where) from None
        return True

    def _unavailable(self, exc: k8s.ApiException, where: str) -> PeeringUnavailableError:
        reason = {
            403: "forbidden (the operator's Role lacks get/create on it)",
            404: f"the {self.plural}.{GROUP} CRD is not installed",
        }.get(exc.status, f"HTTP {exc.status} {exc.reason}")
        return PeeringUnavailableError(f"{self.kind} {self.name} {where}: {reason}")


async def keep_peering(
    peering: Peering,
    api_config: k8s.Configuration,
    *,
    interval: float = KEEP_SECONDS,
) -> None:
    """Recreate the peering object whenever it is found missing; runs until cancelled."""
    log = get_logger("service.operator.peering")
    while True:
        await asyncio.sleep(interval)
        try:
            async with k8s.ApiClient(api_config) as api:
                created = await peering.ensure(k8s.CustomObjectsApi(api))
        except PeeringUnavailableError as exc:
            log.warning("peering_object_unavailable", error=str(exc))
            continue
        if created:
            log.warning("peering_object_recreated", peering=peering.name, where=created)
