"""The bridge's pure parts (tests/cluster/bridge.py), without a cluster.

How a pod's environment is resolved (values, the downward API, Secrets and
ConfigMaps, ``$(VAR)``), which arguments follow the entrypoint, how Service
names are routed to the local stand-ins, and how kubectl's watch stream is
split into objects.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.cluster.bridge import (
    ROUTES_ENV,
    BridgeError,
    _Lookup,
    command_args,
    container_env,
    expand,
    field_value,
    json_stream,
    service_routes,
)
from tests.conftest import ROOT

POD: dict[str, Any] = {
    "metadata": {
        "name": "w-1",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "w"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "kwok-node-0", "serviceAccountName": "sa"},
    "status": {"podIP": "10.244.0.7", "hostIP": "10.243.0.1", "podIPs": [{"ip": "10.244.0.7"}]},
}


def fake_kubectl(objects: dict[tuple[str, str], dict[str, Any]]) -> Any:
    """A ``ControlPlane.kubectl`` stand-in that answers ``get KIND NAME -o json``."""

    def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        key = (args[1], args[2])
        if key not in objects:
            return subprocess.CompletedProcess(args, 1, "", f'{args[1]} "{args[2]}" not found')
        return subprocess.CompletedProcess(args, 0, json.dumps(objects[key]), "")

    return kubectl


def test_field_value__downward_api_paths() -> None:
    assert field_value(POD, "metadata.name") == "w-1"
    assert field_value(POD, "metadata.namespace") == "ns"
    assert field_value(POD, "status.podIP") == "10.244.0.7"
    assert field_value(POD, "status.podIPs") == "10.244.0.7"
    assert field_value(POD, "spec.nodeName") == "kwok-node-0"
    assert field_value(POD, "metadata.labels['app']") == "w"
    assert field_value(POD, "metadata.annotations['note']") == "hi"
    with pytest.raises(BridgeError, match="unsupported fieldRef"):
        field_value(POD, "spec.containers")


def test_expand__earlier_variables_only__double_dollar_escapes() -> None:
    defined = {"A": "x"}
    assert expand("$(A)-$(B)-$$(A)", defined) == "x-$(B)-$(A)"


def test_container_env__every_source__resolved_in_order() -> None:
    secret = {"data": {"token": base64.b64encode(b"jwt").decode()}}
    config = {"data": {"level": "debug", "x": "1"}}
    lookup = _Lookup(fake_kubectl({("secret", "s"): secret, ("configmap", "c"): config}), "ns")
    container = {
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"}],
        "env": [
            {"name": "PLAIN", "value": "v"},
            {"name": "REF", "value": "$(PLAIN)/$(CM_x)"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "level"}}},
            {
                "name": "MAYBE",
                "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
            },
        ],
    }

    env = container_env(POD, container, lookup)

    assert env == {
        "CM_level": "debug",
        "CM_x": "1",
        "PLAIN": "v",
        "REF": "v/1",
        "NS": "ns",
        "TOKEN": "jwt",
        "LEVEL": "debug",
    }


def test_container_env__missing_secret__refused_as_the_kubelet_does() -> None:
    lookup = _Lookup(fake_kubectl({}), "ns")
    container = {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(BridgeError, match="secret ns/s not readable"):
        container_env(POD, container, lookup)


def test_command_args__after_the_entrypoint() -> None:
    assert command_args({"args": ["worker"]}) == ["worker"]
    assert command_args({"command": ["resonate-patterns", "operator"], "args": ["-x"]}) == [
        "operator",
        "-x",
    ]
    with pytest.raises(BridgeError):
        command_args({"command": ["sh", "-c", "true"]})


def test_service_routes__every_dns_form_and_port() -> None:
    svc = {
        "metadata": {"name": "rp-server", "namespace": "ns"},
        "spec": {"ports": [{"port": 8001}]},
    }
    routes = service_routes([svc], "127.0.0.1:4000")
    assert [r[0] for r in routes] == [
        "rp-server",
        "rp-server.ns",
        "rp-server.ns.svc",
        "rp-server.ns.svc.cluster.local",
    ]
    assert {tuple(r[1:]) for r in routes} == {(8001, "127.0.0.1", 4000)}


def test_install_service_routes__in_a_new_process__both_resolvers_routed() -> None:
    """Through the ``sitecustomize`` path the operator gets: socket and uvloop resolve alike."""
    code = (
        "import asyncio, socket, uvloop\n"
        "from tests.cluster.bridge import install_service_routes\n"
        "install_service_routes()\n"
        "print(socket.getaddrinfo('rp-server.ns.svc', 8001)[0][4])\n"
        "async def main():\n"
        "    infos = await asyncio.get_running_loop().getaddrinfo('rp-server.ns.svc', 8001)\n"
        "    print(infos[0][4])\n"
        "asyncio.run(main(), loop_factory=uvloop.new_event_loop)\n"
        "print(socket.getaddrinfo('127.0.0.1', 9)[0][4])\n"
    )
    env = {**os.environ, ROUTES_ENV: json.dumps([["rp-server.ns.svc", 8001, "127.0.0.1", 4000]])}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == ["('127.0.0.1', 4000)"] * 2 + ["('127.0.0.1', 9)"]


def test_json_stream__objects_split_across_reads() -> None:
    objects = [{"type": "ADDED", "object": {"n": i, "s": "é" * 3}} for i in range(3)]
    text = "".join(json.dumps(o, indent=2) + "\n" for o in objects)
    # A child that writes the stream in 7-byte pieces, cutting objects and characters.
    writer = (
        "import sys, time\n"
        "data = sys.stdin.buffer.read()\n"
        "for i in range(0, len(data), 7):\n"
        "    sys.stdout.buffer.write(data[i:i + 7]); sys.stdout.flush()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(text.encode())
    proc.stdin.close()

    assert list(json_stream(proc)) == objects
    proc.wait()
