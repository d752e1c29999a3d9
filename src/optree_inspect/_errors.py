"""The error family of optree_inspect (DESIGN.md section 5)."""

from __future__ import annotations

MAX_LISTED = 8
"""How many candidates, children or suggestions an error message lists at most."""


class QueryError(KeyError):
    """A query that does not select what the verb needs.

    A `KeyError` (so a `LookupError`), so code written for `optax.tree_utils` that catches
    `KeyError` still catches it. Unlike `KeyError`, `str(error)` is the plain message.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NoMatchError(QueryError):
    """Nothing in the tree matches the query."""


class AmbiguousMatchError(QueryError):
    """Several nodes match a query that must select exactly one."""


class QuerySyntaxError(QueryError, ValueError):
    """A query string that cannot be parsed; the message points at the offending character."""

    def __init__(self, query: str, position: int, reason: str) -> None:
        shown = query if len(query) <= 120 else query[:117] + "..."
        caret = " " * min(position, len(shown)) + "^"
        super().__init__(f"{reason} at position {position} of the query:\n  {shown}\n  {caret}")
        self.query = query
        self.position = position


class ScheduledHyperparameterError(ValueError):
    """`set` on a hyperparameter whose value a schedule recomputes at every update."""


class ConstantHyperparameterError(ValueError):
    """`set` on a hyperparameter the optimizer keeps in its closures (with `optimizer=`)."""


def bounded(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters, so that no message grows with the tree."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listing(items: list[str], total: int | None = None) -> str:
    """The first `MAX_LISTED` items, one an indented line, and how many more there are."""
    total = len(items) if total is None else total
    lines = [f"  {bounded(item, 100)}" for item in items[:MAX_LISTED]]
    if total > MAX_LISTED:
        lines.append(f"  ... and {total - MAX_LISTED} more")
    return "\n".join(lines)
