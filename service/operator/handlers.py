"""kopf handlers of the autoscaling operator: thin, each one awaited call.

:func:`build_registry` returns a fresh :class:`kopf.OperatorRegistry` with
every handler on it, so the operator (``resonate-patterns operator``) and the
tests run the same handlers. Settings are applied at startup, never read in
decorator arguments at import time: the label selector
(``RESONATE_PATTERNS_OPERATOR_SELECTOR``) reaches the handlers' ``labels=``
filters when :func:`build_registry` is called at startup.

The daemons run without kopf's finalizer (see :func:`release_daemons`):
deleting a WorkerAutoscaler needs no cleanup, and the DELETED watch event
stops its daemon instead.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from typing import TYPE_CHECKING, Any

import kopf

from service.operator.kube import GROUP, PLURAL, VERSION
from service.operator.loop import OperatorContext, run_autoscaler
from service.operator.peering import Peering, PeeringUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


#: The finalizer earlier builds of the operator put on every WorkerAutoscaler. Named here,
#: kopf removes it from the objects that still carry it, since no handler needs it now.
FINALIZER = "resonate-patterns.io/autoscaler"


#: The component named on the Kubernetes Events the operator posts (kopf's default: "kopf").
REPORTING_COMPONENT = "resonate-patterns-operator"

#: Seconds between attempts to create the peering object while it cannot be (CRD not served).
PEERING_RETRY_SECONDS = 2.0


def configure(settings: kopf.OperatorSettings, *, peering: Peering | None) -> None:
    """Operator-wide kopf settings."""
    settings.posting.level = logging.INFO  # scale events (kopf.info) reach Kubernetes
    # Which operator wrote an Event: kopf's defaults ("kopf", "dev") are the same for every
    # operator of every release; the host name is the pod's name in a cluster.
    settings.posting.reporting_component = REPORTING_COMPONENT
    settings.posting.reporting_instance = socket.gethostname()
    settings.persistence.finalizer = FINALIZER
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
        settings.peering.name = peering.name
        settings.peering.mandatory = True


def build_registry(
    *,
    peering: Peering | None,
    selector: Iterable[tuple[str, str]] | None = None,
    login: Callable[..., kopf.ConnectionInfo | None] | None = None,
    tweak: Callable[[kopf.OperatorSettings], None] | None = None,
) -> kopf.OperatorRegistry:
    """Every handler of the operator on a new registry.

    With a ``selector`` ((label, value) pairs), the handlers act only on
    WorkerAutoscalers carrying every one of those labels: kopf filters the
    watched objects, so another release's objects in the same namespace get
    no daemon, no status, no annotations and no events from this operator.
    """
    registry = kopf.OperatorRegistry()
    labels = dict(selector) if selector else None

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

    if peering is not None:

        @kopf.on.startup(registry=registry, retries=None, backoff=PEERING_RETRY_SECONDS)
        async def peering_object(memo: kopf.Memo, logger: Any, **_: Any) -> None:
            """Create the peering object before kopf reads the CRDs and starts acting."""
            try:
                await memo.context.start_peering(peering)
            except PeeringUnavailableError as exc:
                raise kopf.TemporaryError(str(exc), delay=PEERING_RETRY_SECONDS) from None

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        """Close the Resonate readers and the Kubernetes client."""
        await memo.context.close()

    @kopf.daemon(
        GROUP, VERSION, PLURAL, registry=registry, labels=labels, cancellation_timeout=10.0
    )
    async def autoscale(
        body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        """Scale the target Deployment by the group's backlog for as long as the object exists."""
        await run_autoscaler(body, stopped, memo.context, logger)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, labels=labels)
    async def forget(type: str | None, uid: str | None, memo: kopf.Memo, **_: Any) -> None:
        """Stop the daemon of a deleted autoscaler (no finalizer holds the object for kopf)."""
        if type == "DELETED" and uid:
            memo.context.deleted(uid)

    release_daemons(registry)
    return registry


def release_daemons(registry: kopf.OperatorRegistry) -> None:
    """Let the registry's daemons run without a finalizer on their objects.

    kopf puts a finalizer on every object a daemon serves, so that it can stop
    the daemon before the object disappears, and has no switch to leave it
    off (its maintainers keep it mandatory). Here it protects nothing, since
    deleting a WorkerAutoscaler needs no cleanup, and it outlives the operator:
    ``helm uninstall`` deletes the operator's Deployment, RoleBinding, Role and
    ServiceAccount before the WorkerAutoscalers (Helm deletes kinds it does not
    know last), and a namespace's deletion has no order at all; the operator is
    then gone or forbidden to patch, the finalizer stays, and the namespace
    stays Terminating for good. Without it, the ``forget`` handler stops the
    daemon on the DELETED event, and the daemon also stops when its status
    write finds the object gone (404).

    This rewrites a private field of kopf's registry (``requires_finalizer`` of
    the spawning handlers); tests/operator checks that the registry requires no
    finalizer, so a kopf release that moves it fails there.
    """
    spawning = registry._spawning
    spawning._handlers = [
        dataclasses.replace(handler, requires_finalizer=False) for handler in spawning._handlers
    ]


def make_memo(context: OperatorContext) -> kopf.Memo:
    """The memo every handler receives (the shared context under ``context``)."""
    return kopf.Memo(context=context)
