"""Port choice for the local stack: every process gets its own port."""

from __future__ import annotations

import socket

from service.stack import free_ports, plan_stack
from tests.conftest import make_settings


def test_free_ports__distinct_unused_and_avoiding() -> None:
    first = free_ports(20)
    assert len(set(first)) == 20
    again = free_ports(20, avoid=first)
    assert not set(again) & set(first)
    for port in again:  # nothing listens there: each can be bound
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_plan_stack__port_zero__server_and_workers_never_share_a_port(tmp_path: object) -> None:
    settings = make_settings(RESONATE_PATTERNS_DATA_DIR=str(tmp_path))
    for _ in range(50):
        plan = plan_stack(settings, workers=3, port=0, data=None, group=None)
        ports = [plan.server_port, *plan.worker_ports]
        assert len(set(ports)) == 4, ports


def test_plan_stack__fixed_port__workers_count_up_from_the_metrics_port(tmp_path: object) -> None:
    settings = make_settings(
        RESONATE_PATTERNS_DATA_DIR=str(tmp_path), RESONATE_PATTERNS_HTTP_PORT="9400"
    )
    plan = plan_stack(settings, workers=3, port=8001, data=None, group=None)
    assert plan.server_port == 8001
    assert plan.worker_ports == [9400, 9401, 9402]
