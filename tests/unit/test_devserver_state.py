"""The local server's state: the same-origin heartbeat rule, resend of unacquired work, the gate."""

from __future__ import annotations

from typing import Any

from resonate_base import PROTOCOL_VERSION

from service.devserver.hub import WRITTEN_PRUNE_AT, Connection
from service.devserver.state import ServerState
from service.devserver.tasks import HEARTBEAT_ORIGIN_MESSAGE

NOW = 1_000_000
TTL = 10_000
GROUP = "poll://any@workers"


def env(kind: str, data: dict[str, Any], **head: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "head": {"corrId": "c", "version": PROTOCOL_VERSION, **head},
        "data": data,
    }


def create(state: ServerState, promise_id: str, *, parent: str | None = None) -> None:
    tags = {"resonate:target": GROUP}
    if parent is not None:
        tags["resonate:parent"] = parent
    out = state.handle(
        NOW, env("promise.create", {"id": promise_id, "timeoutAt": 1 << 60, "tags": tags})
    )
    assert out["head"]["status"] == 200, out


def acquire(state: ServerState, task_id: str, pid: str = "w1") -> int:
    version = state.tasks[task_id].version
    out = state.handle(
        NOW, env("task.acquire", {"id": task_id, "version": version, "pid": pid, "ttl": TTL})
    )
    assert out["head"]["status"] == 200, out
    return int(out["data"]["task"]["version"])


def held(*tasks: str) -> ServerState:
    state = ServerState()
    for task_id in tasks:
        create(state, task_id)
        acquire(state, task_id)
    return state


def heartbeat(state: ServerState, at: int, tasks: list[tuple[str, int]]) -> dict[str, Any]:
    refs = [{"id": t, "version": v} for t, v in tasks]
    return state.handle(at, env("task.heartbeat", {"pid": "w1", "tasks": refs}))


# -- same-origin heartbeats --------------------------------------------------------------------


def test_heartbeat__mixed_origins__400_official_message_and_no_lease_extended() -> None:
    state = held("a", "a:1", "b")
    before = {t: state.tasks[t].lease_until for t in ("a", "a:1", "b")}
    later = NOW + TTL // 2
    out = heartbeat(state, later, [("a", 1), ("a:1", 1), ("b", 1)])
    assert out["head"]["status"] == 400
    assert out["data"] == HEARTBEAT_ORIGIN_MESSAGE == "All tasks must belong to the same origin"
    assert {t: state.tasks[t].lease_until for t in before} == before


def test_heartbeat__one_origin__every_lease_extended() -> None:
    state = held("a", "a:1", "a:1.2")
    later = NOW + TTL // 2
    out = heartbeat(state, later, [("a", 1), ("a:1", 1), ("a:1.2", 1)])
    assert out["head"]["status"] == 200
    assert all(state.tasks[t].lease_until == later + TTL for t in ("a", "a:1", "a:1.2"))


def test_heartbeat__one_request_per_origin__both_extended_and_leases_survive() -> None:
    state = held("a", "b")
    later = NOW + TTL // 2
    assert heartbeat(state, later, [("a", 1)])["head"]["status"] == 200
    assert heartbeat(state, later, [("b", 1)])["head"]["status"] == 200
    state.tick(NOW + TTL + 1)  # past the original lease, before the extended one
    assert {state.tasks["a"].state, state.tasks["b"].state} == {"acquired"}


def test_heartbeat__empty_list__400_as_on_main() -> None:
    out = heartbeat(ServerState(), NOW, [])
    assert (out["head"]["status"], out["data"]) == (400, "Tasks array must not be empty")


def test_heartbeat__other_pid_or_version__skipped_silently() -> None:
    state = held("a")
    later = NOW + TTL // 2
    assert heartbeat(state, later, [("a", 7)])["head"]["status"] == 200
    assert state.tasks["a"].lease_until == NOW + TTL


# -- resend of work nobody acquired ------------------------------------------------------------


def test_resend_unacquired__pending_at_the_sent_version__sent_again_now() -> None:
    state = ServerState(retry_ms=30_000)
    create(state, "job")
    state.take_outbox()
    resent = state.resend_unacquired(NOW + 5, [("job", 0)])
    assert resent == ["job"]
    [out] = state.take_outbox()
    assert out.address == GROUP
    assert out.message["data"]["task"] == {"id": "job", "version": 0}
    # The retry timer restarts from the resend.
    assert state.tasks["job"].retry_at == NOW + 5 + 30_000


def test_resend_unacquired__acquired_or_released_since__not_sent_again() -> None:
    state = ServerState()
    create(state, "job")
    acquire(state, "job")  # version 0 -> 1
    state.take_outbox()
    assert state.resend_unacquired(NOW, [("job", 0)]) == []
    state.release_pid(NOW, "w1")  # pending again at version 1, dispatched by the release
    state.take_outbox()
    assert state.resend_unacquired(NOW, [("job", 0), ("gone", 3)]) == []
    assert state.take_outbox() == []


def test_retry_timer__pending_task__sent_again_every_retry_ms() -> None:
    state = ServerState(retry_ms=500)
    create(state, "job")
    state.take_outbox()
    state.tick(NOW + 499)
    assert state.take_outbox() == []
    state.tick(NOW + 500)
    assert [o.message["data"]["task"]["id"] for o in state.take_outbox()] == ["job"]


def test_connection_wrote__remembers_executes_and_prunes_acquired_ones() -> None:
    conn = Connection("workers", "w1")
    conn.wrote({"kind": "unblock", "data": {}}, lambda t, v: True)
    assert conn.written == {}
    for i in range(WRITTEN_PRUNE_AT - 1):
        conn.wrote({"kind": "execute", "data": {"task": {"id": f"t{i}", "version": 0}}}, bool)
    assert len(conn.written) == WRITTEN_PRUNE_AT - 1
    # At the threshold, only those still unacquired are kept.
    last = {"kind": "execute", "data": {"task": {"id": "keep", "version": 2}}}
    conn.wrote(last, lambda t, v: t == "keep")
    assert conn.written == {"keep": 2}


# -- envelope and gate ---------------------------------------------------------------------------


def test_head_auth_not_a_string__400_whatever_the_gate() -> None:
    out = ServerState().handle(NOW, env("promise.get", {"id": "x"}, auth=5))
    assert out["head"]["status"] == 400
    assert "'head.auth' must be a string" in out["data"]


def test_gate__runs_after_envelope_checks_and_before_the_kind_lookup() -> None:
    calls: list[tuple[str, Any]] = []

    def gate(kind: str, head: dict[str, Any], data: dict[str, Any]) -> tuple[int, str] | None:
        calls.append((kind, head.get("auth")))
        return (401, "Unauthorized") if head.get("auth") != "ok" else None

    state = ServerState()
    no_version = env("promise.get", {"id": "x"}) | {"head": {"corrId": "c"}}
    bad_version = state.handle(NOW, no_version, gate)
    assert bad_version["head"]["status"] == 400
    assert calls == []
    unknown = state.handle(NOW, env("no.such.kind", {}), gate)
    assert (unknown["head"]["status"], unknown["data"]) == (401, "Unauthorized")
    allowed = state.handle(NOW, env("promise.get", {"id": "x"}, auth="ok"), gate)
    assert allowed["head"]["status"] == 404
    assert calls == [("no.such.kind", None), ("promise.get", "ok")]
