"""The error family of optree_inspect: every error a public function raises derives from `Error`.

Each message is bounded (`MAX_MESSAGE` characters) whatever the size of the tree, the query or the
value: the pieces are cut with `bounded` where they are written, and `Error.__str__` cuts the whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

MAX_LISTED = 8
"""How many candidates, children or suggestions an error message lists at most."""
LISTED_CHARACTERS = 3000
"""How many characters of listed rows an error message holds at most: rows are listed whole (a
suggested query can be copied), as many as fit."""
MAX_MESSAGE = 4000
"""No message of this package is longer than this many characters."""


class Error(Exception):
    """The root of every documented error of optree_inspect.

    `str(error)` is the plain message, cut to `MAX_MESSAGE` characters.
    """

    def __str__(self) -> str:
        text = str(self.args[0]) if self.args else ""
        return bounded(text, MAX_MESSAGE)


class QueryError(Error, KeyError):
    """A query that does not select what the verb needs.

    A `KeyError` (so a `LookupError`), so code written for `optax.tree_utils` that catches
    `KeyError` still catches it. Unlike `KeyError`, `str(error)` is the plain message.
    """


class NoMatchError(QueryError):
    """Nothing in the tree matches the query."""


class AmbiguousMatchError(QueryError):
    """Several nodes match a query that must select exactly one. `count` is how many;
    `candidates` holds, for the first few, the node's path (its whole keystr) and a whole query
    that selects it alone. The message lists as many of them as fit."""

    def __init__(self, message: str, candidates: tuple[tuple[str, str], ...] = (), count: int = 0) -> None:
        super().__init__(message)
        self.candidates = candidates
        self.count = max(count, len(candidates))


class QuerySyntaxError(QueryError, ValueError):
    """A query string that cannot be parsed; the message points at the offending character."""

    def __init__(self, query: str, position: int, reason: str) -> None:
        start = max(0, position - 60)
        shown = query[start : start + 120]
        prefix = "..." if start else ""
        suffix = "..." if start + 120 < len(query) else ""
        caret = " " * (len(prefix) + min(position - start, len(shown))) + "^"
        super().__init__(
            f"{reason} at position {position} of the query:\n  {prefix}{shown}{suffix}\n  {caret}"
        )
        self.query = query
        self.position = position


class ScheduledHyperparameterError(Error, ValueError):
    """`set` on a hyperparameter whose value a schedule recomputes at every update."""


class ConstantHyperparameterError(Error, ValueError):
    """`set` on a hyperparameter the optimizer keeps in its closures (with `optimizer=`)."""


class OptimizerMismatchError(Error, ValueError):
    """`optimizer=` names an optimizer whose structure contradicts the state's."""


class StructureError(Error, ValueError):
    """A value for `set` whose structure or shape differs from the node it replaces, or a value
    outside the range of the leaf's dtype."""


class LeafTypeError(Error, TypeError):
    """A value for `set` of another kind than the leaf (float into an int leaf, a string into an
    array leaf), or a leaf that holds no value to change (an abstract `jax.ShapeDtypeStruct`)."""


class EditConflictError(Error, ValueError):
    """Two edits of one `set` select the same node, or a node and its descendant."""


class DeletedArrayError(Error, ValueError):
    """The selected array was deleted (donated to a jitted function): its data is gone."""


class TreeError(Error, ValueError):
    """JAX cannot flatten the tree: a dict whose keys it cannot sort (`{0: ..., "b": ...}`), or a
    custom node whose flatten function fails."""


class TreeTooDeepError(TreeError):
    """The tree is nested deeper than JAX can flatten (about 1,000 levels on Python 3.11)."""


class CheckpointError(Error, ValueError):
    """A path that holds no orbax checkpoint, a step it does not have, or orbax-checkpoint not
    installed."""


class RestoreMismatchError(Error, ValueError):
    """`restore_like`: the checkpoint and `like` differ (a part only one of them has, another
    shape); the message names each difference."""


class MigrationError(Error, ValueError):
    """`migrate` cannot carry the state over: a part of the old state would carry nowhere (name it
    in `drop=`), a rule pairs no leaves, or a counter has no step to start from (pass `step=`)."""


class InvalidArgumentError(Error, TypeError):
    """An argument of the wrong kind: a query that is none of the five forms, an optimizer that is
    not an optax `GradientTransformation`."""


def raised_here(function: Callable[P, R]) -> Callable[P, R]:
    """Make `function`'s documented errors start their traceback at the public call, so that a
    user sees their own line and the message, not the package's internal frames."""

    @functools.wraps(function)
    def public(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except Error as error:
            raise error.with_traceback(None) from None

    return public


def bounded(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters, so that no message grows with the tree."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters; never fails."""
    try:
        text = repr(value)
    except Exception:  # a user object whose repr raises
        text = f"<{type(value).__name__}>"
    return bounded(text, limit)


def listing(items: list[str], total: int | None = None, budget: int = LISTED_CHARACTERS) -> str:
    """The first items, each whole on an indented line, at most `MAX_LISTED` and only as many as
    fit in `budget` characters, then how many more there are (of `total`, all by default)."""
    total = len(items) if total is None else total
    lines: list[str] = []
    used = 0
    for item in items[:MAX_LISTED]:
        used += len(item) + 3
        if used > budget:
            break
        lines.append(f"  {item}")
    if total > len(lines):
        lines.append(f"  ... and {total - len(lines):,} more")
    return "\n".join(lines)


for _error in (
    value for value in list(globals().values()) if isinstance(value, type) and issubclass(value, Error)
):
    _error.__module__ = "optree_inspect"  # tracebacks name the public class: optree_inspect.NoMatchError
