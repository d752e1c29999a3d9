"""The command line: `optree-inspect SUBCOMMAND PATH ...` (docs/cli.md).

Exit status: 0 on success; 1 when a query matches nothing (or, for `get`, several nodes), when
`check` finds anything, or when `diff` finds a difference; 2 on bad usage, a path that is no
checkpoint (or a damaged or unreadable one), a step it does not have, or orbax-checkpoint missing;
3 on an unexpected error (a defect); 130 when interrupted. Errors are one line on stderr, and a
successful run writes nothing there. A closed stdout (`| head`) ends the output quietly and keeps
the command's own status.

Each subcommand is one handler in `_HANDLERS`, written on the public API (`optree_inspect as oi`)
as a user's script would be.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import jax
import numpy as np

import optree_inspect as oi


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
    check = command("check", "what is wrong in the saved state", "path")
    check.add_argument(
        "--first-bad",
        action="store_true",
        help="the first step of a CheckpointManager directory whose state holds NaN or Inf (bisection)",
    )
    check.add_argument("--all", action="store_true", help="with --first-bad: read every step, a line a step")
    check.add_argument("--quiet", action="store_true", help="with --first-bad: no progress on stderr")
    command("memory", "bytes on each device by role, from the saved shardings", "path")
    command("diff", "what differs between two checkpoints", "path_a", "path_b")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; the exit status (see the module docstring)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stderr holds only the error line
            arguments = _parser().parse_args(argv)
            return _HANDLERS[arguments.command](arguments)
    except _Usage as error:
        _error(f"{error} (see optree-inspect --help)")
        return 2
    except oi.AmbiguousMatchError as error:
        _error(_ambiguous(error))
        return 1
    except oi.Error as error:
        _error(_one_line(error))
        no_match = isinstance(error, oi.QueryError) and not isinstance(error, oi.QuerySyntaxError)
        return 1 if no_match else 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as error:  # a defect of this package: one line all the same
        _error(f"unexpected {type(error).__name__}: {_one_line(error)}")
        return 3


_SUGGESTED = 1500
"""At most this many characters of suggested queries in an ambiguous `get`'s line."""


def _ambiguous(error: oi.AmbiguousMatchError) -> str:
    """The line of an ambiguous `get`: each candidate whole, with its query as a shell takes it,
    as many as fit in `_SUGGESTED` characters, then how many more."""
    first = str(error.args[0]).splitlines()[0].rstrip(":")
    total = error.count
    shown: list[str] = []
    for path, query in error.candidates:
        suggestion = f"{path} -> {_shell_word(query)}"
        if sum(len(s) + 2 for s in shown) + len(suggestion) > _SUGGESTED:
            break
        shown.append(suggestion)
    more = total - len(shown)
    tail = f" (and {more} more: optree-inspect find lists them)" if more else ""
    return f"{first}: {'; '.join(shown)}{tail}" if shown else f"{first}{tail}"


def _error(line: str) -> None:
    """Print `line` as the one error line on stderr, unless stderr is closed."""
    try:
        print(f"optree-inspect: {line}", file=sys.stderr, flush=True)
    except BrokenPipeError:
        _to_devnull(sys.stderr)


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


def _describe(arguments: argparse.Namespace) -> int:
    tree = oi.load(arguments.path, step=arguments.step, arrays=arguments.stats)
    gc.freeze()  # what exists now outlives the describing: no collection set off by it walks that
    try:
        description = oi.describe(tree, stats=arguments.stats)
        rows = [
            {"path": oi.keystr(row.path), "query": row.query, "depth": row.depth, "summary": row.summary,
             "stats": None if row.stats is None else {k: _json(v) for k, v in row.stats.items()}}
            for row in description
        ]  # fmt: skip
        text = str(description)
    finally:
        gc.unfreeze()
    _emit(arguments.json, {"rows": rows}, text)
    return 0


def _get(arguments: argparse.Namespace) -> int:
    value = oi.get(oi.load(arguments.path, step=arguments.step), arguments.query)
    shown = _leaf_text(value) if _is_leaf(value) else str(oi.describe(value))
    _emit(arguments.json, {"query": arguments.query, "value": _json(value)}, shown)
    return 0


def _find(arguments: argparse.Namespace) -> int:
    matches = oi.find(oi.load(arguments.path, step=arguments.step), arguments.query)
    if not matches:
        raise oi.NoMatchError(f"No node matches {arguments.query!r}.")
    lines = [f"{oi.keystr(m.path) or '<root>'}: {_node_text(m.value)}" for m in matches]
    entries = [{"path": oi.keystr(m.path), "value": _json(m.value)} for m in matches]
    _emit(arguments.json, {"matches": entries}, "\n".join(lines))
    return 0


def _hyperparams(arguments: argparse.Namespace) -> int:
    tree = oi.load(arguments.path, step=arguments.step)
    values = oi.hyperparams(tree, counters=arguments.counters)
    text = "\n".join(f"{query}: {_leaf_text(value)}" for query, value in values.items())
    _emit(arguments.json, {query: _json(value) for query, value in values.items()}, text)
    return 0


def _check(arguments: argparse.Namespace) -> int:
    if arguments.first_bad:
        return _first_bad(arguments)
    if arguments.all or arguments.quiet:
        raise _Usage(f"{'--all' if arguments.all else '--quiet'} goes with --first-bad")
    report = oi.check(oi.load(arguments.path, step=arguments.step, arrays=True))
    _emit(arguments.json, {"findings": _findings(report)}, str(report))
    return 1 if report else 0


def _findings(report: oi.Report) -> list[dict[str, str]]:
    return [
        {"kind": f.kind, "path": oi.keystr(f.path), "query": f.query, "message": f.message} for f in report
    ]


def _first_bad(arguments: argparse.Namespace) -> int:
    """`check --first-bad`: the first step holding NaN or Inf (docs/first-bad.md)."""
    if arguments.step is not None:
        raise _Usage("--first-bad reads the steps itself; leave out --step")
    found = oi.first_bad(
        arguments.path, every_step=arguments.all, progress=False if arguments.quiet else None
    )
    document: dict[str, Any] = {
        "first_bad_step": found.step,
        "steps_read": found.steps_read,
        "findings": _findings(found.report),
    }
    if arguments.all:
        fields = ("step", "leaves", "nonfinite_leaves", "nan", "inf")
        document["steps"] = [{name: getattr(read, name) for name in fields} for read in found.steps]
    _emit(arguments.json, document, str(found))
    return 0 if found.step is None else 1


def _memory(arguments: argparse.Namespace) -> int:
    report = oi.memory(oi.load(arguments.path, step=arguments.step, scalars=False))
    _emit(arguments.json, report.to_dict(), repr(report))
    return 0


def _diff(arguments: argparse.Namespace) -> int:
    before = oi.load(arguments.path_a, step=arguments.step, arrays=True)
    result = oi.diff(before, oi.load(arguments.path_b, step=arguments.step, arrays=True))
    rows = [row._replace(path=oi.keystr(row.path))._asdict() for row in result]  # type: ignore[arg-type]
    _emit(arguments.json, {"rows": rows}, str(result))
    return 1 if result else 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "describe": _describe,
    "get": _get,
    "find": _find,
    "hyperparams": _hyperparams,
    "check": _check,
    "memory": _memory,
    "diff": _diff,
}
"""Each subcommand's handler: it reads its arguments, prints its output and returns the status."""


def _is_leaf(value: Any) -> bool:
    return jax.tree_util.all_leaves([value])


def _leaf_text(leaf: Any) -> str:
    """A leaf as `describe` shows it under its parent: `f32[] = 0.5`, `f32[4,3]`, `int = 3`.

    >>> _leaf_text(np.float32(0.5)), _leaf_text(None)
    ('f32[] = 0.5', 'None')
    """
    return oi.describe([leaf]).rows[1].summary


def _node_text(node: Any) -> str:
    """A node in a few characters: a leaf as `describe` shows it, a subtree by type and leaves.

    >>> _node_text(np.int32(2)), _node_text({"a": np.zeros(3), "b": None}), _node_text(None)
    ('i32[] = 2', 'dict, 1 leaf', 'None, 0 leaves')
    """
    if _is_leaf(node):
        return _leaf_text(node)
    count = len(jax.tree.leaves(node))
    kind = "None" if node is None else type(node).__name__
    return f"{kind}, {count:,} lea{'ves' if count != 1 else 'f'}"


def _json(value: Any) -> Any:
    """A value as JSON: numbers as numbers (NaN and infinities as strings, see `_strict`), arrays
    and abstract leaves by shape and dtype, a subtree by keystr."""
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
        return {oi.keystr(path): _json(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]}
    return str(value)


def _strict(value: Any) -> Any:
    """`value` as strict JSON (RFC 8259 has no NaN): a non-finite float as the string `"NaN"`,
    `"Infinity"` or `"-Infinity"`, a NumPy scalar as its Python value, anything else unknown as
    its `str`."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, dict):
        return {str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    return str(value)


def _emit(as_json: bool, document: Any, text: str) -> None:
    """Print the output; where stdout is closed (`| head`), stop quietly."""
    output = json.dumps(_strict(document), allow_nan=False) if as_json else text
    try:
        print(output, flush=True)
    except BrokenPipeError:
        _to_devnull(sys.stdout)


def _to_devnull(stream: Any) -> None:
    """Point a closed stream's file descriptor at /dev/null: the interpreter flushes it again at
    exit, which would print a traceback and change the exit status."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no file descriptor: captured
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def entry_point() -> NoReturn:
    """The `optree-inspect` script (and `python -m optree_inspect ARGS`)."""
    _quiet_late_reports()
    _exit(main())


def _quiet_late_reports() -> None:
    """Hide what orbax reports after a failed read, from its other threads, that the error line
    has said already: its callbacks' "Event loop is closed" (unraisable exceptions) and asyncio's
    log of the futures whose errors orbax never retrieved."""
    sys.unraisablehook = lambda _: None
    logging.getLogger("asyncio").disabled = True


def _exit(status: int) -> NoReturn:
    """Flush the output and end the process with `status` now, without the interpreter's teardown.

    The teardown of JAX, orbax and tensorstore after a command that read a checkpoint takes about
    a second, as long as a small command itself, and prints nothing the user needs; anything
    orbax's threads report during it is not printed either. The output is complete here.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            _to_devnull(stream)
    os._exit(status)
