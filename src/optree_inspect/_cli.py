"""The command line: `optree-inspect SUBCOMMAND PATH ...` (README: Checkpoints from the shell).

Exit status: 0 on success; 1 when a query matches nothing (or, for `get`, several nodes), when
`check` finds anything, or when `diff` finds a difference; 2 on bad usage, a path that is no
checkpoint, a step it does not have, or orbax-checkpoint missing. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import jax
import numpy as np
from jax.tree_util import keystr

from ._check import check
from ._checkpoint import load
from ._describe import _leaf_summary, describe
from ._diff import _short, diff
from ._errors import AmbiguousMatchError, Error, NoMatchError, QueryError, QuerySyntaxError
from ._optax.hyperparams import hyperparams
from ._resolve import find, get


class _Usage(Exception):
    """Bad usage: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optree-inspect", description="Inspect a saved optimizer state (orbax).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, text: str, *paths: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        for path in paths:
            sub.add_argument(path, help="a CheckpointManager directory, a step directory or one item")
        sub.add_argument(
            "--step", type=int, help="the step of a CheckpointManager directory (default: latest)"
        )
        sub.add_argument("--json", action="store_true", help="one JSON document on stdout")
        return sub

    command("describe", "the saved tree, one line a node", "path").add_argument(
        "--stats", action="store_true", help="values too (reads the arrays)"
    )
    command("get", "the one node a query selects", "path").add_argument("query")
    command("find", "every node a query selects", "path").add_argument("query")
    command("hyperparams", "injected hyperparameters", "path").add_argument(
        "--counters", action="store_true", help="the step counters too"
    )
    command("check", "what is wrong in the saved state", "path")
    command("diff", "what differs between two checkpoints", "path_a", "path_b")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; the exit status (see the module docstring)."""
    try:
        arguments = _parser().parse_args(argv)
        return _run(arguments)
    except _Usage as error:
        print(f"optree-inspect: {error} (see optree-inspect --help)", file=sys.stderr)
        return 2
    except AmbiguousMatchError as error:  # the queries as a shell takes them
        first = str(error.args[0]).splitlines()[0].rstrip(":")
        queries = "; ".join(f"{path} -> {_shell_word(query)}" for path, query in error.candidates)
        print(f"optree-inspect: {first}: {queries}"[:500], file=sys.stderr)
        return 1
    except Error as error:
        print(f"optree-inspect: {_one_line(error)}", file=sys.stderr)
        no_match = isinstance(error, QueryError) and not isinstance(error, QuerySyntaxError)
        return 1 if no_match else 2


def _shell_word(text: str) -> str:
    """`text` quoted for a POSIX shell, in double quotes where that reads better than
    `shlex.quote` (a query such as `[1]['count']`)."""
    quoted = shlex.quote(text)
    if quoted != text and not any(char in text for char in '"$`\\!'):
        return f'"{text}"'
    return quoted


def _one_line(error: BaseException) -> str:
    text = str(error.args[0] if error.args else error)
    return " ".join(text.split())[:500]


def _run(arguments: argparse.Namespace) -> int:
    emit_json = arguments.json
    if arguments.command == "diff":
        before = load(arguments.path_a, step=arguments.step, arrays=True)
        result = diff(before, load(arguments.path_b, step=arguments.step, arrays=True))
        rows = [row._replace(path=keystr(row.path))._asdict() for row in result]  # type: ignore[arg-type]
        _emit(emit_json, {"rows": rows}, str(result))
        return 1 if result else 0
    values = arguments.command == "check" or getattr(arguments, "stats", False)  # reads the arrays
    tree = load(arguments.path, step=arguments.step, arrays=values)
    if arguments.command == "describe":
        description = describe(tree, stats=arguments.stats)
        rows = [
            {"path": keystr(row.path), "query": row.query, "depth": row.depth, "summary": row.summary,
             "stats": None if row.stats is None else {k: _json(v) for k, v in row.stats.items()}}
            for row in description
        ]  # fmt: skip
        _emit(emit_json, {"rows": rows}, str(description))
        return 0
    if arguments.command == "get":
        value = get(tree, arguments.query)
        shown = _leaf_summary(value) if jax.tree_util.all_leaves([value]) else str(describe(value))
        _emit(emit_json, {"query": arguments.query, "value": _json(value)}, shown)
        return 0
    if arguments.command == "find":
        matches = find(tree, arguments.query)
        if not matches:
            raise NoMatchError(f"No node matches {arguments.query!r}.")
        lines = [f"{keystr(m.path) or '<root>'}: {_short(m.value)}" for m in matches]
        entries = [{"path": keystr(m.path), "value": _json(m.value)} for m in matches]
        _emit(emit_json, {"matches": entries}, "\n".join(lines))
        return 0
    if arguments.command == "hyperparams":
        values = hyperparams(tree, counters=arguments.counters)
        text = "\n".join(f"{query}: {_leaf_summary(value)}" for query, value in values.items())
        _emit(emit_json, {query: _json(value) for query, value in values.items()}, text)
        return 0
    report = check(tree)
    findings = [
        {"kind": f.kind, "path": keystr(f.path), "query": f.query, "message": f.message} for f in report
    ]
    _emit(emit_json, {"findings": findings}, str(report))
    return 1 if report else 0


def _json(value: Any) -> Any:
    """A value as JSON: numbers as numbers, arrays and abstract leaves by shape and dtype, a
    subtree by keystr."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, jax.ShapeDtypeStruct):
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        if np.shape(value) == ():
            number = np.asarray(value).item()
            return number if isinstance(number, bool | int | float) else str(number)
        return {"shape": list(np.shape(value)), "dtype": str(value.dtype)}
    if not jax.tree_util.all_leaves([value]):
        return {keystr(path): _json(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]}
    return str(value)


def _emit(as_json: bool, document: Any, text: str) -> None:
    print(json.dumps(document, default=str) if as_json else text)


def entry_point() -> None:
    """The `optree-inspect` script."""
    sys.exit(main())
