"""The package's modules import one way, lowest first, as docs/development.md draws."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parent.parent / "src" / "optree_inspect"

ORDER = [
    "_errors",
    "_compat",
    "_keys",
    "_registry",
    "_state_rules",
    "_runs",
    "_paths",
    "_keycheck",
    "_index",
    "_build",
    "_cache",
    "_match",
    "_query",
    "_naming",
    "_leaf",
    "_placement",
    "_treekit",
    "_cast",
    "_engine",
    "_compare",
    "_listing",
    "_optax.names",
    "_optax.fields",
    "_optax.closures",
    "_optax.states",
    "_optax.hyperparams",
    "_resolve",
    "_edit",
    "_values",
    "_layout",
    "_rows",
    "_render",
    "_describe",
    "_roles",
    "_check",
    "_memory",
    "_metrics",
    "_diff",
    "_checkpoint",
    "_first_bad",
    "_restore",
    "_migrate",
    "_cli",
]
"""Each module may import only modules before it (and `__init__` and `__main__` anything)."""

CORE = ORDER[: ORDER.index("_listing") + 1]
"""The generic core and the leaf, tree and device layer (every module before the optax layer): they
know a library's states only through the rules registered with
`_state_rules`, so that a new library's states never need an edit here."""


def _path(module: str) -> pathlib.Path:
    return PACKAGE.joinpath(*module.split(".")).with_suffix(".py")


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
        path = _path(module)
        later = set(ORDER[position:])
        assert not (_imports(path, module) & later), (module, _imports(path, module) & later)


def test_the_core_imports_no_layer_above_it() -> None:
    for module in CORE:
        imported = _imports(_path(module), module)
        above = {name for name in imported if name not in CORE}
        assert not above, (module, above)
        source = _path(module).read_text()
        assert "optax" not in {name.split(".")[0] for name in _absolute_imports(source)}, module


def _absolute_imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found
