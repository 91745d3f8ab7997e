"""Only service/connector speaks to resonate-sdk internals; everything else uses its public API."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
CONNECTOR = SERVICE / "connector"

#: The SDK's user-facing API: what its README and examples use.
PUBLIC = frozenset(
    {
        "resonate.resonate",
        "resonate.context",
        "resonate.retry",
        "resonate.error",
        "resonate.promises",
    }
)


def _sdk_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [
            (node.lineno, n) for n in names if n.split(".")[0] in ("resonate", "resonate_base")
        ]
    return found


def _private_reaches(tree: ast.AST) -> list[tuple[int, str]]:
    """``x.resonate._something`` / ``resonate._something``: private SDK attributes."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            base = node.value
            name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            if name == "resonate":
                found.append((node.lineno, f"{name}.{node.attr}"))
    return found


def _outside_connector() -> list[Path]:
    return [p for p in sorted(SERVICE.rglob("*.py")) if CONNECTOR not in p.parents]


def test_no_module_outside_the_connector_imports_sdk_internals() -> None:
    offences = [
        f"{path.relative_to(SERVICE.parent)}:{line}: {module}"
        for path in _outside_connector()
        for line, module in _sdk_imports(ast.parse(path.read_text()))
        if module not in PUBLIC
    ]
    assert offences == []


def test_no_module_outside_the_connector_reads_private_sdk_attributes() -> None:
    offences = [
        f"{path.relative_to(SERVICE.parent)}:{line}: {what}"
        for path in _outside_connector()
        for line, what in _private_reaches(ast.parse(path.read_text()))
    ]
    assert offences == []


def test_the_checks_see_what_they_look_for() -> None:
    # The connector itself does all of this, so the scanners must report it there.
    sdk = ast.parse((CONNECTOR / "sdk.py").read_text())
    assert "resonate.connections.sse" in {m for _, m in _sdk_imports(sdk)}
    assert {what for _, what in _private_reaches(sdk)} == {"resonate._runtime"}
