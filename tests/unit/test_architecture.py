"""The layout's rules, read from the import graph of ``service/`` (grimp).

docs/architecture.md draws the packages and which way they may depend; these
tests hold the code to it: no import cycle between modules (function-level
imports count: a lazy import is still a cycle), none between the packages
(the rooms of the house), and the pure layers stay below the ones that do I/O.
Imports under ``TYPE_CHECKING`` do not count: they never run.
"""

from __future__ import annotations

import collections
from functools import cache

import grimp
import pytest

#: Each package and the packages it must never import (directly or through others).
LAYERS_BELOW: dict[str, set[str]] = {
    # The error root and the signal helper are leaves.
    "service.errors": {"service"},
    # The scaling policy and the settings are pure: no transport, no processes.
    "service.operator.policy": {
        "service.connector",
        "service.devserver",
        "service.runtime",
        "service.local",
        "service.cli",
    },
    "service.config": {"service.connector", "service.devserver", "service.runtime"},
    # The connector speaks the protocol; it knows nothing of patterns, the CLI or the stack.
    "service.connector": {
        "service.patterns",
        "service.cli",
        "service.local",
        "service.api",
        "service.devserver",
    },
    # The development server is a stand-in for the official one: no worker code in it.
    "service.devserver": {
        "service.patterns",
        "service.runtime",
        "service.worker",
        "service.api",
        "service.local",
        "service.cli",
    },
    "service.telemetry": {"service.connector", "service.devserver", "service.patterns"},
}


@cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("service", exclude_type_checking_imports=True, cache_dir=None)


def room(module: str) -> str:
    """The package a module lives in: ``service.<room>``."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules() -> None:
    g = graph()
    cycles = []
    for importer in sorted(g.modules):
        for imported in sorted(g.find_modules_directly_imported_by(importer)):
            back = g.find_shortest_chain(importer=imported, imported=importer)
            if imported != importer and back:
                cycles.append(f"{importer} -> {' -> '.join(back)}")
    assert not cycles, "\n".join(cycles)


def test_no_import_cycle_between_packages() -> None:
    g = graph()
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for importer in g.modules:
        for imported in g.find_modules_directly_imported_by(importer):
            if room(importer) != room(imported):
                edges[room(importer)].add(room(imported))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cyclic = sorted(f"{a} <-> {b}" for a in list(edges) for b in edges[a] if reaches(b, a))
    assert not cyclic, cyclic


@pytest.mark.parametrize("package", sorted(LAYERS_BELOW))
def test_layers__package_never_imports_the_ones_above_it(package: str) -> None:
    g = graph()
    modules = {m for m in g.modules if m == package or m.startswith(package + ".")}
    assert modules, f"no module {package}"
    bad = []
    for forbidden in LAYERS_BELOW[package]:
        targets = {
            m
            for m in g.modules
            if (m == forbidden or m.startswith(forbidden + ".")) and m != "service"
        }
        if forbidden == "service":  # a leaf: nothing of the project at all
            targets = {m for m in g.modules if m not in modules}
        for module in sorted(modules):
            for target in sorted(targets - modules):
                chain = g.find_shortest_chain(importer=module, imported=target)
                if chain:
                    bad.append(" -> ".join(chain))
                    break
    assert not bad, "\n".join(bad)
