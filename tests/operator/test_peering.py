"""The operator's own peering object (service/operator/peering.py) against kmock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import kmock
import pytest
from kubernetes_asyncio import client as k8s

from service.operator.peering import Peering, PeeringUnavailableError, keep_peering
from tests.operator.kmock_shim import ALL_VERBS, NS, Emulator

pytestmark = pytest.mark.kmock(cls=Emulator)

NAMESPACED = "kopf.dev/v1/kopfpeerings"
CLUSTER = "kopf.dev/v1/clusterkopfpeerings"


def declare(emulator: Emulator, *resources: str) -> None:
    for resource in resources:
        kind = "KopfPeering" if resource == NAMESPACED else "ClusterKopfPeering"
        emulator.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=resource == NAMESPACED, verbs=ALL_VERBS
        )


@contextlib.asynccontextmanager
async def custom_api(emulator: Emulator) -> AsyncIterator[k8s.CustomObjectsApi]:
    async with k8s.ApiClient(k8s.Configuration(host=str(emulator.url).rstrip("/"))) as api:
        yield k8s.CustomObjectsApi(api)


async def status_of(emulator: Emulator, path: str) -> int:
    resp = await emulator.get(path)
    return int(resp.status)


async def test_ensure__namespaced__created_once_in_each_namespace(kmock: Emulator) -> None:
    declare(kmock, NAMESPACED)
    peering = Peering("rp-operator", (NS, "other"))
    async with custom_api(kmock) as custom:
        assert await peering.ensure(custom) == [NS, "other"]
        assert await peering.ensure(custom) == []  # already there: nothing created
    for namespace in (NS, "other"):
        path = f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/rp-operator"
        assert await status_of(kmock, path) == 200


async def test_ensure__cluster_wide__one_cluster_kopf_peering(kmock: Emulator) -> None:
    declare(kmock, CLUSTER)
    peering = Peering("ns-rp-operator")
    assert (peering.kind, peering.plural) == ("ClusterKopfPeering", "clusterkopfpeerings")
    async with custom_api(kmock) as custom:
        assert await peering.ensure(custom) == ["cluster"]
    assert await status_of(kmock, "/apis/kopf.dev/v1/clusterkopfpeerings/ns-rp-operator") == 200


async def test_ensure__crd_not_served__one_line_naming_the_crd(kmock: Emulator) -> None:
    # What the API server answers for a resource whose CRD is missing (kmock would serve it).
    kmock[kmock.resource(NAMESPACED)] << 404
    async with custom_api(kmock) as custom:
        with pytest.raises(PeeringUnavailableError) as raised:
            await Peering("rp-operator", (NS,)).ensure(custom)
    assert str(raised.value) == (
        f"KopfPeering rp-operator in namespace {NS}: the kopfpeerings.kopf.dev CRD is not installed"
    )


async def test_keep_peering__recreates_a_deleted_object(kmock: Emulator) -> None:
    declare(kmock, NAMESPACED)
    peering = Peering("rp-operator", (NS,))
    path = f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/rp-operator"
    async with custom_api(kmock) as custom:
        assert await peering.ensure(custom) == [NS]
    config = k8s.Configuration(host=str(kmock.url).rstrip("/"))
    keeper = asyncio.create_task(keep_peering(peering, config, interval=0.05))
    try:
        await kmock.delete(path)
        assert await status_of(kmock, path) == 404
        for _ in range(100):
            if await status_of(kmock, path) == 200:
                break
            await asyncio.sleep(0.05)
        assert await status_of(kmock, path) == 200
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
