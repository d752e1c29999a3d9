"""Where a leaf sits in an optimizer state: its role (the parameters, a moment field such as `mu`,
the hyperparameters and counters, or other), the state field that holds it, and its key names
under that field, so that a moment and its parameter meet by name. Shared by `check`, `memory`.

>>> import jax.numpy as jnp, optax
>>> from optree_inspect._cache import index_and_leaves
>>> index, leaves = index_and_leaves(optax.adam(1e-3).init({"w": jnp.zeros(3)}))
>>> leaf_roles(index, leaves)
['hyperparameters and counters', 'mu', 'nu']
"""

from __future__ import annotations

import itertools
from typing import Any

from ._index import StructureIndex
from ._optax.names import is_optax_state_type
from ._optax.states import is_counter
from ._rows import is_hyperparameter, row_node

PARAMS, SCALARS, OTHER = "params", "hyperparameters and counters", "other"
"""The roles that are not a moment field's name."""
NAMED = frozenset({PARAMS, SCALARS, OTHER})


def params_field(index: StructureIndex) -> int | None:
    """The tree's own parameters: its root's `params` field (a flax `TrainState`, a dict), else
    its `model` field (an `nnx.Optimizer`'s state); None where the root is itself an optimizer
    state (lbfgs keeps a `params` field) or has neither."""
    if index.state_names[0] is not None:
        return None
    found = {index.texts[child]: child for child in index.children(0)}
    return found.get("params", found.get("model"))


def moment_roots(index: StructureIndex) -> list[int]:
    """The moment fields of optax states (`mu`, `nu`, `trace`, ...): fields that hold no state
    and are no counter or hyperparameter (`field_role`)."""
    states = itertools.compress(range(len(index)), index.state_names)
    return [
        child
        for state in states
        for child in index.children(state)
        if not index.holds_state[child] and field_role(index, child) not in NAMED
    ]


def names_under(index: StructureIndex, root: int, leaf: int) -> tuple[str, ...]:
    """The key names from `root` (excluded) down to `leaf` (to its nnx Variable, where one holds
    it, so that a Variable and a plain array of one name match): `()` for the root itself."""
    node = row_node(index, leaf)
    if node <= root:
        return ()
    return tuple(index.texts[n] for n in [*index.ancestors(node)[index.depths[root] + 1 :], node])


def leaf_roles(index: StructureIndex, values: list[Any]) -> list[str]:
    """Each leaf's role (`_structural_roles`), where a state's field that is a scalar (a flag
    such as `apply_if_finite`'s `last_finite`, a running value such as lbfgs's `value`) or a
    NamedTuple of scalars that optax defines (lbfgs's linesearch `info`) counts with the
    hyperparameters and counters rather than as a moment; a dict or a NamedTuple of the user's
    of scalars (the moments of scalar parameters) stays a moment."""
    roles, fields = _structural_roles(index)
    candidates = [
        p
        for p, (role, field) in enumerate(zip(roles, fields, strict=True))
        if field >= 0 and role not in NAMED and _may_be_scalars(index, field)
    ]
    if not candidates:
        return roles
    holds_array = set()
    for position in candidates:
        if len(getattr(values[position], "shape", ())):
            holds_array.add(fields[position])
    demoted = list(roles)
    for position in candidates:
        if fields[position] not in holds_array:
            demoted[position] = SCALARS
    return demoted


def _may_be_scalars(index: StructureIndex, field: int) -> bool:
    """A field that is a leaf (or an nnx Variable), or a NamedTuple that optax defines: a record
    of scalars, never a params-shaped moment (a NamedTuple of another module's is the params')."""
    if index.is_leaf[field] or index.variables[field]:
        return True
    return is_optax_state_type(index.types[field])


_ROLES = ("roles", "by structure")


def _structural_roles(index: StructureIndex) -> tuple[list[str], list[int]]:
    """Each leaf's role from the structure alone, and the state field that holds it (-1 where
    none), memoised on the index."""
    cached = index.memo.results.get(_ROLES)
    if cached is not None:
        return cached
    params_root = params_field(index)
    role = [OTHER] * len(index)
    field = [-1] * len(index)
    for node in range(1, len(index)):
        parent = index.parents[node]
        if node == params_root:
            role[node] = PARAMS
        elif parent == 0 and index.texts[node] == "step" and index.leaf_counts[node] == 1:
            role[node] = SCALARS  # a TrainState's or an nnx Optimizer's step
        elif index.state_names[parent] is not None and not index.holds_state[node]:
            role[node], field[node] = field_role(index, node), node
        else:
            role[node], field[node] = role[parent], field[parent]
    result = [role[node] for node in index.leaf_nodes], [field[node] for node in index.leaf_nodes]
    index.memo.results[_ROLES] = result
    return result


def field_role(index: StructureIndex, node: int) -> str:
    """The role of a state's field: a counter, a hyperparameter (or their schedules' bookkeeping),
    or a scalar leaf field (a flag) counts with the hyperparameters; else its name."""
    if is_counter(index, node) or is_hyperparameter(index, node) or index.hidden[node]:
        return SCALARS
    if index.texts[node] == "hyperparams":  # inject_hyperparams' dict of them
        return SCALARS
    name = index.texts[node]
    return f"{name} (state)" if name in (PARAMS, SCALARS, OTHER) else name
