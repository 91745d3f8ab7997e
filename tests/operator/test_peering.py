"""The operator's own peering object (service/operator/peering.py) against kmock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import jwt
import kmock
import pytest
from kubernetes_asyncio import client as k8s

from service.operator.kube import ServiceAccountRef, service_account_of
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


def bound_token(namespace: str, account: str, uid: str) -> str:
    """A token shaped like the API server's bound ServiceAccount tokens (signature unchecked)."""
    claims = {
        "iss": "https://kubernetes.default.svc",
        "sub": f"system:serviceaccount:{namespace}:{account}",
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": account, "uid": uid}},
    }
    return jwt.encode(claims, "a-test-key-not-the-api-servers-32-bytes-long", algorithm="HS256")


@pytest.mark.parametrize("prefix", ["", "Bearer "])
def test_service_account_of__a_bound_token__namespace_name_uid(prefix: str) -> None:
    cfg = k8s.Configuration()
    cfg.api_key["BearerToken"] = prefix + bound_token("team-a", "rp-operator", "uid-1")
    assert service_account_of(cfg) == ServiceAccountRef("team-a", "rp-operator", "uid-1")


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "not-a-jwt",
        jwt.encode({"sub": "x"}, "a-test-key-not-the-api-servers-32-bytes-long"),
    ],
)
def test_service_account_of__no_bound_token__none(token: str | None) -> None:
    cfg = k8s.Configuration()
    if token is not None:
        cfg.api_key["BearerToken"] = token
    assert service_account_of(cfg) is None


def test_body__labels_and_owned_by_the_account_only_in_its_own_namespace() -> None:
    owner = ServiceAccountRef(NS, "rp-operator", "uid-1")
    peering = Peering("rp-operator", (NS, "other"), labels=(("app", "rp"),), owner=owner)
    assert peering.body(NS) == {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {
            "name": "rp-operator",
            "namespace": NS,
            "labels": {"app": "rp"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "name": "rp-operator",
                    "uid": "uid-1",
                }
            ],
        },
    }
    # Elsewhere (and cluster-wide) the collector could not find the owner: none.
    assert "ownerReferences" not in peering.body("other")["metadata"]  # type: ignore[operator]
    cluster = Peering("ns-rp-operator", owner=owner).body(None)
    assert cluster["metadata"] == {"name": "ns-rp-operator"}
