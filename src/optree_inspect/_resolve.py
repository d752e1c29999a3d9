"""Resolving a query against a tree: `find` and `get`, and the errors that explain a miss or an
ambiguity (docs/reading.md)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from jax.tree_util import keystr
from jaxtyping import PyTree

from ._cache import one_call, structure_index
from ._compat import variable_value
from ._errors import (
    MAX_LISTED,
    AmbiguousMatchError,
    DeletedArrayError,
    NoMatchError,
    bounded,
    listing,
    raised_here,
)
from ._keys import KeyPath, path_text
from ._leaf import is_deleted, is_variable, unwrap, without_variables
from ._naming import attached_query, shortest_query
from ._optax.closures import ConstantHyperparameter, Optimizer, read_optimizer
from ._optax.names import optax_names
from ._optax.states import bookkeeping_hint, missing_hyperparameter_hint
from ._query import Found, Name, ParsedQuery, PatternQuery, Query, parse_query
from ._registry import children_with_keys

_UNSET: Any = object()
_SUGGESTED_LENGTH = 1000
"""A "did you mean" query longer than this is given as its last name only, so it is never cut."""


class Match(NamedTuple):
    """One node that a query selects: its JAX key path and the node itself.

    Its repr spells the path as a keystr, on one line: `Match('[0].count', Array(0, dtype=int32))`.
    """

    path: KeyPath
    value: Any

    def __repr__(self) -> str:
        # flax's repr of a Variable spans three lines for one number
        value = self.value
        if _holds_variable(value):
            value = jax.tree.map(_OneLine, value, is_leaf=is_variable)
        text = f"Match({keystr(self.path)!r}, {value!r})"
        return text if "\n" not in text else " ".join(line.strip() for line in text.splitlines())


class _OneLine:
    """An nnx Variable as `Match`'s repr shows it: `OptArray(Array(1, dtype=int32))`."""

    def __init__(self, variable: Any) -> None:
        self.variable = variable

    def __repr__(self) -> str:
        if not is_variable(self.variable):
            return repr(self.variable)
        return f"{type(self.variable).__name__}({variable_value(self.variable)!r})"


def _holds_variable(value: Any) -> bool:
    return any(map(is_variable, jax.tree.leaves(value, is_leaf=is_variable)))


@raised_here
def find(
    tree: PyTree, query: Query, /, *, optimizer: Optimizer | None = None, variables: bool = False
) -> list[Match]:
    """Every node of `tree` that `query` selects, in pre-order; `[]` when none does.

    **Arguments:**
    - `tree`: any JAX pytree, such as an optax optimizer state.
    - `query`: a key path, a keystr, a pattern, a type or a predicate (see docs/queries.md).
    - `optimizer`: the optax optimizer of the state, to also see the hyperparameters it keeps in
      its closures (read-only), as fields of the state node of their transformation.
    - `variables`: return nnx Variables as they are. By default a matched Variable is returned as
      the array it holds, and a matched subtree with the arrays in place of its Variables (also
      the `{"value": array}` dicts of an nnx state restored without its target).

    **Returns:** a list of `Match(path, value)`, `path` a JAX key path.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> state = optax.adam(1e-3).init({"w": jnp.zeros(2)})
    >>> [oi.keystr(m.path) for m in oi.find(state, "mu.*")]
    ["[0].mu['w']"]

    ```
    """
    found = _resolve(tree, parse_query(query), optimizer, variables)
    return [Match(path, value) for path, value in found]


@raised_here
def get(
    tree: PyTree,
    query: Query,
    /,
    default: Any = _UNSET,
    *,
    optimizer: Optimizer | None = None,
    variables: bool = False,
) -> PyTree:
    """The single node of `tree` that `query` selects.

    **Raises:** `NoMatchError` when nothing matches and no `default` is given (with `default=`,
    even `None`, that is returned instead); `AmbiguousMatchError` when several nodes match.
    With `optimizer=`, hyperparameters held in the optimizer's closures match too; an nnx
    Variable is returned as its array unless `variables=True` (see `find`).

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    >>> oi.get(tx.init({"w": jnp.zeros(2)}), "learning_rate")
    Array(0.001, dtype=float32)

    ```
    """
    parsed = parse_query(query)
    matches = _resolve(tree, parsed, optimizer, variables)
    if len(matches) == 1:
        path, value = matches[0]
        if is_deleted(value):
            raise DeletedArrayError(
                f"The array at {path_text(path)} was deleted (donated to a jitted "
                "function?): its data is gone. Use the state the jitted call returned."
            )
        return value
    if not matches:
        if default is not _UNSET:
            return default
        raise no_match_error(tree, parsed, optimizer)
    raise ambiguous_error(tree, parsed, [path for path, _ in matches], optimizer)


def resolve_one(tree: Any, query: ParsedQuery) -> tuple[KeyPath, Any]:
    """The path and node of the single match of `query`, with `get`'s errors."""
    matches = query.select(tree)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise no_match_error(tree, query)
    raise ambiguous_error(tree, query, [path for path, _ in matches])


def _resolve(tree: Any, query: ParsedQuery, optimizer: Any = None, variables: bool = False) -> Found:
    with one_call():
        found = query.select(tree)
        if not variables and found:
            found = _variable_values(tree, found)
        if optimizer is not None:
            found += attached_matches(tree, query, read_optimizer(optimizer, tree).constants)
    return found


def _variable_values(tree: Any, found: Found) -> Found:
    """Each match with the arrays in place of the nnx Variables it is or holds. A leaf or a typed
    Variable is answered alone, so that an exact path to one never walks the tree."""
    if all(is_variable(value) or children_with_keys(value) is None for _, value in found):
        return [(path, unwrap(value)) for path, value in found]
    index = structure_index(tree)
    if not index.has_variables:
        return found
    restored, result = index.restored_variables, []
    for path, value in found:
        node = index.number_of(path)
        if node is not None and any(index.variables[node : node + index.sizes[node]]):
            value = without_variables(value, restored)
        result.append((path, value))
    return result


def attached_matches(tree: Any, query: ParsedQuery, constants: list[ConstantHyperparameter]) -> Found:
    """The optimizer-held hyperparameters that `query` selects, each a field of its state node."""
    return [(c.path, c.value) for c in constants if query.selects_attached(tree, c)]


def no_match_error(tree: Any, query: ParsedQuery, optimizer: Any = None) -> NoMatchError:
    """What the query form says of its miss, and for a pattern what optax would add: a hint about
    hyperparameters that are not injected, what the optimizer could not read, schedule bookkeeping."""
    lines = query.explain_miss(tree)
    if isinstance(query, PatternQuery):
        index = structure_index(tree)
        last = query.components[-1]
        if isinstance(last, Name):
            if optimizer is not None:
                unread = read_optimizer(optimizer, tree).unmatched
                if unread:
                    lines.insert(1, f"Not read from the optimizer:\n{listing(unread[:3], len(unread))}")
            meant = _meant(tree, query, optimizer)
            hint = (
                f"Did you mean {' or '.join(map(repr, meant))}? (optax's name for {bounded(last.text)!r})"
                if meant
                else missing_hyperparameter_hint(index, last.text, optimizer is not None)
            )
            if hint:
                lines.insert(1, hint)
        hint = bookkeeping_hint(index, query)
        if hint:
            lines.append(hint)
    return NoMatchError("\n".join(lines))


def _meant(tree: Any, query: PatternQuery, optimizer: Any) -> list[str]:
    """The query with its last name spelled as optax spells it (`lr` as `learning_rate`), for each
    spelling that selects something here."""
    last = query.components[-1]
    if not isinstance(last, Name) or last.is_glob:
        return []
    constants = read_optimizer(optimizer, tree).constants if optimizer is not None else []
    found = []
    for name in optax_names(last.text):
        text = query.text[: len(query.text) - len(last.text)] + name
        spelled = parse_query(text)
        if spelled.select(tree) or attached_matches(tree, spelled, constants):
            found.append(text if len(text) <= _SUGGESTED_LENGTH else name)
    return found


def ambiguous_error(
    tree: Any, query: ParsedQuery, paths: list[KeyPath], optimizer: Any = None
) -> AmbiguousMatchError:
    """An AmbiguousMatchError that lists the first candidates, each whole with a query for it
    alone, as many as fit in the message, and holds them (whole) in `candidates`."""
    index = structure_index(tree)
    constants = (
        {c.path: c for c in read_optimizer(optimizer, tree).constants} if optimizer is not None else {}
    )
    candidates = []
    for path in paths[:MAX_LISTED]:
        if path in constants:
            query_for = attached_query(tree, index, constants[path], list(constants.values()))
        else:
            query_for = shortest_query(index, index.number_of(path) or 0)
        candidates.append((keystr(path) or "<root>", query_for))
    rows = [f"{path}  ->  get(tree, {query_for!r})" for path, query_for in candidates]
    return AmbiguousMatchError(
        f"{query.label} matches {len(paths)} nodes; use a query that selects one:\n"
        f"{listing(rows, len(paths))}",
        tuple(candidates),
        len(paths),
    )
