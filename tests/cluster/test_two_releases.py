"""Two releases of the chart in one namespace, each with its own operator, on a real API server.

Releases ``alpha`` and ``beta`` are installed side by side in one namespace
(tests/cluster/conftest.py's ``install``: the real helm, kube-apiserver with
RBAC, kwok nodes, the bridge running every worker and operator pod as a
process under the pod's own ServiceAccount, a local Resonate server per
release standing in for its server pod). Both run an operator with peering on
and the chart's default selector (``operator.selector.ownRelease``: act only
on the WorkerAutoscalers labelled with the own release). Work is
``process_one`` calls of ``STEP_DELAY_MS`` each: a backlog counts in full for
several polls, then drains, and the long stabilization window holds a
scaled-up count.

Checked, with the counts the policy gives (``ceil(backlog / 10)``):

* both installs succeed, and every object the chart makes (ServiceAccounts,
  Roles, RoleBindings, KopfPeerings, ...) exists once per release, named and
  labelled after it; each RoleBinding grants its own Role to its own account;
  each operator gets its own selector and peering name;
* 25 calls for alpha's group scale alpha's Deployment 1 -> 3 while beta's
  stays at 1 (its minReplicas), then 15 for beta's group scale beta's 1 -> 2
  while alpha's stays at 3; each status shows its own release's numbers;
* who wrote what, from the API server's audit log: every status write,
  ``/scale`` patch, Event and peering patch made by a ServiceAccount in the
  namespace came from the operator of the release that owns the object, and
  each operator made each kind of write (kopf reports every Event as
  ``kopf``/``dev``, so the Events themselves cannot tell the operators apart);
  each operator's /metrics names its own autoscaler only;
* ``helm uninstall alpha`` removes alpha's objects and nothing else: beta's
  keep their uids, beta's operator keeps running, and 25 new calls for beta's
  group scale it 2 -> 3.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from tests.cluster.conftest import eventually, say, submit

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cluster.conftest import ControlPlane, Release

pytestmark = [pytest.mark.cluster_e2e, pytest.mark.slow]

#: Seconds each call holds its worker: the operator polls several times meanwhile.
STEP_DELAY_MS = 8000
TARGET_PER_REPLICA = 10
VALUES: dict[str, Any] = {
    "operator": {"peering": {"enabled": True}},
    "workerDefaults": {
        # Long enough to finish a call still running when alpha is uninstalled.
        "drainSeconds": 10,
        "extraSettings": {"RESONATE_PATTERNS_STEP_DELAY_MS": STEP_DELAY_MS},
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 10,
            "targetTasksPerReplica": TARGET_PER_REPLICA,
            "pollingIntervalSeconds": 1,
            # Far longer than the test: a count reached stays while the backlog drains.
            "scaleDown": {"stabilizationWindowSeconds": 600},
        },
    },
}
#: The group of both releases (the chart's default), and the calls its backlog is made of.
GROUP, CALL = "workers", "process_one"
INSTANCE = "app.kubernetes.io/instance"
#: The kinds of object the chart makes with these values (the helm test pod aside).
KINDS = (
    "deployments,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,"
    "kopfpeerings.kopf.dev,workerautoscalers.resonate-patterns.io"
)
#: The label every autoscaler series of the operator's /metrics carries.
AUTOSCALER_LABEL = re.compile(r'\bautoscaler="([^"]*)"')


def chart_objects(release: Release) -> set[tuple[str, str]]:
    """(kind, name) of every object of ``KINDS`` one release makes."""
    full = release.fullname
    components = ("operator", "server", "worker-workers")
    return {
        *(("Deployment", f"{full}-{c}") for c in components),
        *(("Service", f"{full}-{c}") for c in components),
        *(("ServiceAccount", f"{full}-{c}") for c in ("operator", "server", "worker")),
        ("Role", f"{full}-operator"),
        ("RoleBinding", f"{full}-operator"),
        ("PodDisruptionBudget", f"{full}-worker-workers"),
        ("WorkerAutoscaler", f"{full}-worker-workers"),
    }


def peering_of(release: Release) -> tuple[str, str]:
    """The KopfPeering the release's operator creates (not the chart), owned by its account."""
    return ("KopfPeering", f"{release.fullname}-operator")


def without_peerings(objects: dict[tuple[str, str], Any]) -> set[tuple[str, str]]:
    """The keys of ``objects`` but the KopfPeerings (there once an operator has started)."""
    return {key for key in objects if key[0] != "KopfPeering"}


def listed(plane: ControlPlane, namespace: str, *selector: str) -> dict[tuple[str, str], Any]:
    """(kind, name) -> the object, for every object of ``KINDS`` in ``namespace``."""
    items = plane.get(KINDS, "-n", namespace, *selector)["items"]
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


def operator_account(release: Release) -> str:
    """The user name the release's operator acts as (its ServiceAccount)."""
    return f"system:serviceaccount:{release.namespace}:{release.fullname}-operator"


def status(release: Release) -> dict[str, Any]:
    """The status of the release's WorkerAutoscaler."""
    name = release.worker_deployment()
    found = release.plane.get("workerautoscaler", name, "-n", release.namespace)
    return dict(found.get("status") or {})


def settled(release: Release, replicas: int, *, scaled: bool) -> dict[str, Any]:
    """Wait until the Deployment has ``replicas`` and the status says so; the status."""
    deployment = release.worker_deployment()

    def probe() -> dict[str, Any] | None:
        if release.replicas(deployment) != replicas:
            return None
        now = status(release)
        counts = (now.get("desiredReplicas"), now.get("currentReplicas"))
        done = counts == (replicas, replicas) and (now.get("lastScaleTime") is not None) == scaled
        return now if done else None

    return eventually(probe, f"{deployment} at {replicas} replicas, and its status", 60)


def scaled_by(now: dict[str, Any], submitted: int) -> int:
    """The replicas of the last scaling, checked to follow from the ``submitted`` calls.

    The operator may have read the backlog while the calls were being
    submitted (then scaled in two steps): the backlog its last scaling saw
    lies between the one that gives the same count and ``submitted``.
    """
    reason = str(now.get("lastScaleReason"))
    found = re.fullmatch(r"backlog (\d+) needs (\d+) replicas", reason)
    assert found, now
    backlog, replicas = int(found[1]), int(found[2])
    assert replicas == math.ceil(submitted / TARGET_PER_REPLICA), now
    assert (replicas - 1) * TARGET_PER_REPLICA < backlog <= submitted, now
    return replicas


def drained(release: Release) -> dict[str, Any]:
    """Wait until the release's operator sees an empty backlog; the status."""

    def probe() -> dict[str, Any] | None:
        now = status(release)
        empty = (now.get("observedPending"), now.get("observedInFlight")) == (0, 0)
        return now if empty else None

    return eventually(probe, f"{release.name}'s backlog drained", 60)


def autoscalers_on_metrics(release: Release) -> set[str]:
    """The ``autoscaler`` label of every series the release's operator exports."""
    (operator,) = release.bridge.ready("operator").values()
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as resp:
        return set(AUTOSCALER_LABEL.findall(resp.read().decode()))


def audited_writes(plane: ControlPlane, namespace: str) -> set[tuple[str, str, str]]:
    """(resource[/subresource], user, object) of every write a ServiceAccount made in ``namespace``.

    From the API server's audit log; for an Event, the object is the one it
    is about (``involvedObject``, from the request body).
    """
    writes: set[tuple[str, str, str]] = set()
    for line in plane.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref, user = event.get("objectRef") or {}, event["user"].get("username", "")
        if (
            event["stage"] != "ResponseComplete"
            or event["responseStatus"]["code"] >= 300  # refused: no write
            or ref.get("namespace") != namespace
            or not user.startswith("system:serviceaccount:")
        ):
            continue
        resource = "/".join(filter(None, (ref["resource"], ref.get("subresource"))))
        if ref["resource"] == "events":
            body = event["requestObject"]
            about = body.get("involvedObject") or body["regarding"]  # core/v1 or events.k8s.io
            writes.add((resource, user, f"{about['kind']}/{about['name']}"))
        else:
            writes.add((resource, user, str(ref.get("name"))))
    return writes


def expected_writes(release: Release) -> set[tuple[str, str, str]]:
    """The writes one release's operator makes: status, /scale, Events, peering."""
    user, autoscaler = operator_account(release), release.worker_deployment()
    return {
        ("workerautoscalers/status", user, autoscaler),
        ("deployments/scale", user, release.worker_deployment()),
        ("events", user, f"WorkerAutoscaler/{autoscaler}"),
        ("kopfpeerings", user, f"{release.fullname}-operator"),
    }


def test_two_releases_in_one_namespace__each_operator_scales_only_its_own__uninstall_leaves_other(
    install: Callable[..., Release], control_plane: ControlPlane, request: pytest.FixtureRequest
) -> None:
    began = time.monotonic()
    alpha = install(VALUES, name="alpha")
    beta = install(VALUES, name="beta", namespace=alpha.namespace)
    namespace = alpha.namespace
    installed = time.monotonic()

    # Every object once per release, named and labelled after it.
    everything = listed(control_plane, namespace)
    assert without_peerings(everything) == chart_objects(alpha) | chart_objects(beta) | {
        ("ServiceAccount", "default")
    }
    for release in (alpha, beta):
        own = listed(control_plane, namespace, "-l", f"{INSTANCE}={release.name}")
        assert without_peerings(own) == chart_objects(release)
        binding = own[("RoleBinding", f"{release.fullname}-operator")]
        assert binding["roleRef"]["name"] == f"{release.fullname}-operator"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{release.fullname}-operator",
             "namespace": namespace}
        ]  # fmt: skip
        pod = own[("Deployment", f"{release.fullname}-operator")]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RESONATE_PATTERNS_OPERATOR_SELECTOR"] == f"{INSTANCE}={release.name}"
        assert env["RESONATE_PATTERNS_OPERATOR_PEERING"] == f"{release.fullname}-operator"

    # Both operators act: each has polled its own autoscaler (one idle worker each).
    for release in (alpha, beta):
        release.bridge.wait(
            functools.partial(release.bridge.ready, "operator"), f"{release.name}'s operator", 90
        )
        first = settled(release, 1, scaled=False)
        assert (first["observedPending"], first["observedInFlight"]) == (0, 0)
    operators = {r.name: set(r.bridge.ready("operator")) for r in (alpha, beta)}
    acting = time.monotonic()
    # Each operator created its peering object, labelled with its release and owned by its
    # ServiceAccount (so uninstalling the release deletes it).
    for release in (alpha, beta):
        own = listed(control_plane, namespace, "-l", f"{INSTANCE}={release.name}")
        assert set(own) == chart_objects(release) | {peering_of(release)}
        owners = own[peering_of(release)]["metadata"]["ownerReferences"]
        account = own[("ServiceAccount", f"{release.fullname}-operator")]
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
            ("ServiceAccount", account["metadata"]["name"], account["metadata"]["uid"])
        ]

    # Work for alpha's group: alpha scales to ceil(25 / 10), beta stays at its minimum.
    submit(alpha.server.url, GROUP, 25, "alpha", function=CALL)
    assert scaled_by(settled(alpha, 3, scaled=True), 25) == 3
    beta_status = settled(beta, 1, scaled=False)
    assert (beta_status["observedPending"], beta_status["observedInFlight"]) == (0, 0)
    assert autoscalers_on_metrics(alpha) == {alpha.worker_deployment()}
    assert autoscalers_on_metrics(beta) == {beta.worker_deployment()}

    # Work for beta's group: beta scales to ceil(15 / 10), alpha keeps its 3.
    submit(beta.server.url, GROUP, 15, "beta", function=CALL)
    assert scaled_by(settled(beta, 2, scaled=True), 15) == 2
    assert scaled_by(settled(alpha, 3, scaled=True), 25) == 3
    assert autoscalers_on_metrics(alpha) == {alpha.worker_deployment()}
    assert autoscalers_on_metrics(beta) == {beta.worker_deployment()}
    scaled = time.monotonic()

    # Who wrote what: each release's objects, by its own operator only.
    writes = audited_writes(control_plane, namespace)
    assert writes == expected_writes(alpha) | expected_writes(beta), writes
    events = control_plane.get(
        "events", "-n", namespace, "--field-selector", "involvedObject.kind=WorkerAutoscaler"
    )["items"]
    assert {(e["involvedObject"]["name"], e["reason"]) for e in events} == {
        (alpha.worker_deployment(), "ScaledUp"),
        (beta.worker_deployment(), "ScaledUp"),
    }
    for event in events:  # each about its own Deployment (named as its WorkerAutoscaler)
        assert event["message"].startswith(f"{event['involvedObject']['name']}: "), event

    # Uninstalling alpha removes alpha's objects, and nothing of beta's.
    betas = listed(control_plane, namespace, "-l", f"{INSTANCE}={beta.name}")
    kept = {key: obj["metadata"]["uid"] for key, obj in betas.items()}
    assert alpha.uninstall() == []
    # Alpha's peering object goes with its ServiceAccount (the garbage collector).
    after = eventually(
        lambda: (
            listed(control_plane, namespace)
            if peering_of(alpha) not in listed(control_plane, namespace)
            else None
        ),
        "alpha's KopfPeering collected",
        30,
    )
    assert set(after) == chart_objects(beta) | {peering_of(beta), ("ServiceAccount", "default")}
    assert {key: after[key]["metadata"]["uid"] for key in kept} == kept
    assert beta.replicas(beta.worker_deployment()) == 2
    uninstalled = time.monotonic()

    # Beta's operator (the same process) goes on scaling beta's group.
    drained(beta)
    submit(beta.server.url, GROUP, 25, "beta-after", function=CALL)
    assert scaled_by(settled(beta, 3, scaled=True), 25) == 3
    assert set(beta.bridge.ready("operator")) == operators[beta.name]
    assert [len(beta.bridge.history(pod)) for pod in operators[beta.name]] == [1]
    assert autoscalers_on_metrics(beta) == {beta.worker_deployment()}
    assert audited_writes(control_plane, namespace) == writes
    done = time.monotonic()

    say(
        request,
        f"two releases: installed {installed - began:.1f}s, operators acting "
        f"+{acting - installed:.1f}s, both scaled +{scaled - acting:.1f}s, alpha uninstalled "
        f"+{uninstalled - scaled:.1f}s, beta scaled again +{done - uninstalled:.1f}s",
    )
