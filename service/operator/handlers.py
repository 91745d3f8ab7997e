"""kopf handlers of the autoscaling operator: thin, each one awaited call.

:func:`build_registry` returns a fresh :class:`kopf.OperatorRegistry` with
every handler on it, so the operator (``resonate-patterns operator``) and the
tests run the same handlers. Settings are applied at startup, never read in
decorator arguments at import time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import kopf

from service.operator.kube import GROUP, PLURAL, VERSION
from service.operator.loop import OperatorContext, run_autoscaler

if TYPE_CHECKING:
    from collections.abc import Callable


def configure(settings: kopf.OperatorSettings, *, peering: str | None) -> None:
    """Operator-wide kopf settings."""
    settings.posting.level = logging.INFO  # scale events (kopf.info) reach Kubernetes
    settings.persistence.finalizer = "resonate-patterns.io/autoscaler"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="resonate-patterns.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="resonate-patterns.io", key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    # Watch the configured namespaces (or all) directly: no namespace or CRD
    # scanning, so the operator needs no permission to list namespaces or CRDs.
    settings.scanning.disabled = True
    if peering is None:
        settings.peering.standalone = True
    else:
        settings.peering.name = peering
        settings.peering.mandatory = True


def build_registry(
    *,
    peering: str | None,
    login: Callable[..., kopf.ConnectionInfo | None] | None = None,
    tweak: Callable[[kopf.OperatorSettings], None] | None = None,
) -> kopf.OperatorRegistry:
    """Every handler of the operator on a new registry."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def authenticate(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """Log in as configured (in-cluster service account or kubeconfig by default)."""
        if login is not None:
            return login(**kwargs)
        return await kopf.login_via_async_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        """Apply operator settings."""
        configure(settings, peering=peering)
        if tweak is not None:
            tweak(settings)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        """Close the Resonate readers and the Kubernetes client."""
        await memo.context.close()

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=10.0)
    async def autoscale(
        body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        """Scale the target Deployment by the group's backlog for as long as the object exists."""
        await run_autoscaler(body, stopped, memo.context, logger)

    return registry


def make_memo(context: OperatorContext) -> kopf.Memo:
    """The memo every handler receives (the shared context under ``context``)."""
    return kopf.Memo(context=context)
