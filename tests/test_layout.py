"""The package's modules import one way, lowest first, as the README's development section draws."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parent.parent / "src" / "optree_inspect"

ORDER = [
    "_errors",
    "_compat",
    "_optax.names",
    "_optax.fields",
    "_keys",
    "_registry",
    "_runs",
    "_tree",
    "_match",
    "_query",
    "_naming",
    "_optax.closures",
    "_optax.states",
    "_optax.hyperparams",
    "_resolve",
    "_edit",
    "_values",
    "_describe",
    "_check",
    "_diff",
    "_checkpoint",
    "_restore",
    "_cli",
]
"""Each module may import only modules before it (and `__init__` and `__main__` anything)."""


def _imports(path: pathlib.Path, module: str) -> set[str]:
    package = module.rsplit(".", 1)[0] if "." in module else ""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
            target = ".".join([*filter(None, base), node.module or ""]).strip(".")
            found.add(target)
    return found


def test_every_module_is_in_the_order() -> None:
    modules = {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
        if path.stem not in ("__init__", "__main__")
    }
    assert modules == set(ORDER)


def test_imports_run_one_way() -> None:
    for position, module in enumerate(ORDER):
        path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
        later = set(ORDER[position:])
        assert not (_imports(path, module) & later), (module, _imports(path, module) & later)
