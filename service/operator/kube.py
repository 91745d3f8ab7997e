"""Kubernetes I/O of the operator, with kubernetes_asyncio (never blocking kopf's loop).

* :class:`DeploymentScale` reads and patches a Deployment's ``/scale``
  subresource, so the operator needs no write access to Deployments and puts
  no finalizer on them;
* :func:`patch_status` merge-patches a WorkerAutoscaler's status subresource;
* :func:`load_api_config` loads in-cluster credentials, else the kubeconfig;
* :func:`service_account_of` names the ServiceAccount those credentials are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import jwt
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from service.errors import ResonatePatternsError

GROUP = "resonate-patterns.io"
VERSION = "v1alpha1"
PLURAL = "workerautoscalers"


class TargetMissingError(ResonatePatternsError):
    """The scale target (a Deployment) does not exist."""


class DeploymentScale:
    """A Deployment's replica count, through its ``/scale`` subresource."""

    def __init__(self, apps: k8s.AppsV1Api, namespace: str, name: str) -> None:
        self.apps = apps
        self.namespace = namespace
        self.name = name

    async def get_replicas(self) -> int:
        try:
            scale = await self.apps.read_namespaced_deployment_scale(self.name, self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                msg = f"deployment {self.namespace}/{self.name} not found"
                raise TargetMissingError(msg) from None
            raise
        replicas = scale.spec.replicas if scale.spec is not None else None
        return int(replicas or 0)

    async def set_replicas(self, replicas: int) -> None:
        await self.apps.patch_namespaced_deployment_scale(
            self.name, self.namespace, {"spec": {"replicas": replicas}}
        )


async def patch_status(
    custom: k8s.CustomObjectsApi, namespace: str, name: str, status: dict[str, Any]
) -> None:
    """Merge-patch the status subresource of one WorkerAutoscaler."""
    await custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"status": status},
        # A dict body would otherwise be sent as a JSON patch, which the API rejects.
        _content_type="application/merge-patch+json",  # type: ignore[call-arg]
    )


@dataclass(frozen=True)
class ServiceAccountRef:
    """A ServiceAccount, as an owner reference needs it."""

    namespace: str
    name: str
    uid: str


def service_account_of(cfg: k8s.Configuration) -> ServiceAccountRef | None:
    """The ServiceAccount the client authenticates as, from its bound token's claims.

    A pod's token (and a TokenRequest token) is a JWT whose ``kubernetes.io``
    claim names the account and its uid; the API server already checked it,
    so it is only read here. None for any other credential (a kubeconfig
    with a client certificate, a legacy token).
    """
    raw = str(cfg.api_key.get("BearerToken") or "").removeprefix("Bearer ").strip()
    if not raw:
        return None
    try:
        claims = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    kube = claims.get("kubernetes.io")
    account = kube.get("serviceaccount") if isinstance(kube, dict) else None
    if not isinstance(kube, dict) or not isinstance(account, dict):
        return None
    namespace, name, uid = kube.get("namespace"), account.get("name"), account.get("uid")
    if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(uid, str)):
        return None
    return ServiceAccountRef(namespace, name, uid)


async def load_api_config() -> k8s.Configuration:
    """In-cluster service account credentials, else the local kubeconfig."""
    cfg = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except ConfigException:
        # Read KUBECONFIG now: the client library reads it once, at import.
        path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        await k8s_config.load_kube_config(config_file=path, client_configuration=cfg)
    return cfg
