"""The layers, as the tree shows them, checked by walking every module's imports (issue 16): a module may import
only the layers below it. Imports inside functions count too (the ast sees them); `TYPE_CHECKING` blocks do not."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "wabridge"
# cli/ is the assembly (cli/assembly.py picks the adapters and starts the processes): it may import every layer.

# layer → the wabridge layers it may import (itself always)
ALLOWED: dict[str, set[str]] = {
    "codecs": set(),  # pure data and transforms: nothing of the rest
    "ports": {"engine.secrets", "codecs"},  # the port protocols and the records that cross them
    "engine": {"ports", "codecs"},  # the runtime
    "http": {"engine", "ports", "codecs"},
    "adapters": {"engine", "ports", "codecs", "http"},  # one folder per port
    "genesys": {"engine", "ports", "codecs", "http"},  # the SaaS clients
    "meta": {"engine", "ports", "codecs", "http"},
    # the roles: never an adapter, and never the SaaS clients nor the HTTP client under them (their ports only); the
    # ingress's request plumbing (http/server.py) is the one piece of http/ a role uses
    "actors": {"engine", "ports", "codecs", "http.server", "actors"},
    "sim": {"engine", "codecs", "http", "sim"},  # the simulated SaaS: nothing of the bridge's roles
}


# modules named as layers of their own, so a layer may be allowed one without the rest of its folder
SINGLED_OUT = {("engine", "secrets"), ("http", "server")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "wabridge" or len(parts) < 2:
        return None
    return ".".join(parts[1:3]) if tuple(parts[1:3]) in SINGLED_OUT else parts[1]


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parts[-2] != "cli" and p.name != "__main__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_the_layers_below_it(path: pathlib.Path) -> None:
    relative = str(path.relative_to(PACKAGE))
    own = relative.split("/")[0].removesuffix(".py")
    if own in ("__init__",):
        return
    allowed = ALLOWED[own] | {own}
    wrong = sorted({m for m in _imports(path) if (layer := _layer(m)) is not None and layer not in allowed
                    and layer.partition(".")[0] not in allowed})  # fmt: skip
    wrong = [m for m in wrong if _layer(m) != own]
    assert not wrong, f"{relative} ({own}) imports {wrong}"


def test_the_walk_sees_every_layer() -> None:
    assert {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"} == set(ALLOWED)
