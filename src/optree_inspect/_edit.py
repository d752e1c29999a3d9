"""Editing: `set`, and coercing new values to the nodes they replace (`cast_leaf` casts each leaf)."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey
from jaxtyping import PyTree

from ._cache import structure_index
from ._cast import PLACEMENTS, Placement, cast_leaf
from ._compat import RESTORED_VARIABLE_KEY, variable_with_value
from ._errors import (
    ConstantHyperparameterError,
    DeletedArrayError,
    EditConflictError,
    InvalidArgumentError,
    ScheduledHyperparameterError,
    StructureError,
    bounded,
    raised_here,
    short_repr,
)
from ._keys import KeyEntry, KeyPath, path_text
from ._leaf import is_deleted, is_restored_variable, is_variable, unwrap, without_variables
from ._optax.closures import ConstantHyperparameter, Optimizer, read_optimizer
from ._optax.states import (
    ScheduledSlot,
    inject_example,
    schedule_step_query,
    scheduled_slot_on,
    scheduled_slots_under,
    where_at,
)
from ._paths import _MISSING, child_at, value_at
from ._query import Query, parse_query
from ._registry import children_with_keys
from ._resolve import attached_matches, no_match_error, resolve_one
from ._treekit import Built, Expanded, build, rebuild

_UNSET: Any = object()
"""`set`'s value when none is given (a mapping of edits takes none)."""


@overload
def set(
    tree: PyTree,
    query: Query,
    value: Any,
    /,
    *,
    every: bool = ...,
    optimizer: Optimizer | None = ...,
    placement: Placement = ...,
) -> PyTree: ...


@overload
def set(
    tree: PyTree,
    query: Mapping[Query, Any],
    /,
    *,
    every: bool = ...,
    optimizer: Optimizer | None = ...,
    placement: Placement = ...,
) -> PyTree: ...


@raised_here
def set(
    tree: PyTree,
    query: Query | Mapping[Query, Any],
    value: Any = _UNSET,
    /,
    *,
    every: bool = False,
    optimizer: Optimizer | None = None,
    placement: Placement = "keep",
) -> PyTree:
    """A new tree with the node(s) that `query` selects replaced by `value`.

    **Arguments:**
    - `tree`: any JAX pytree; it is never modified.
    - `query`: any query form, or a mapping `{query: value, ...}` for several edits in one pass.
    - `value`: the new node, or a callable that takes the old node and returns the new one.
    - `every`: edit every match; otherwise each query must select exactly one node.
    - `optimizer`: the optax optimizer of the state, so that a query naming a hyperparameter it
      keeps in its closures is refused with a clear error instead of a no-match.
    - `placement`: where an edited `jax.Array` leaf is placed. `"keep"` (the default): on its own
      sharding, with its commitment, so a jitted step that takes it does not retrace. `"value"`: on
      the value's sharding and commitment (for a function, on what it returns; in a subtree, each
      leaf on its own value's), cast on the devices: move a leaf with
      `lambda x: jax.device_put(x, sharding)`. A value with no placement (a NumPy array, a Python
      number) raises `InvalidArgumentError`. Under `jax.jit` a traced leaf or value is cast as
      with "keep": placement inside a jitted program is the program's. Python scalar, NumPy and
      abstract leaves are cast as with "keep".

    **Returns:** a tree with the same treedef. An edited leaf keeps its shape (a scalar broadcasts),
    dtype (a same-kind cast such as float64 to float32 is made; float into int raises `TypeError`),
    weak type and sharding (unless `placement="value"`), so a jitted step that takes it does not
    retrace. A Python scalar leaf stays a Python scalar of its type when the value is concrete. A
    subtree takes a value of the same structure. `None`, `MaskedNode()` and other empty nodes take
    only an equal structure; a non-array leaf (a string, say) takes only a value of its own type. An
    nnx Variable stays a Variable with its metadata. Untouched subtrees are the same objects. A
    hyperparameter driven by a schedule raises `ScheduledHyperparameterError`. With `optimizer=`, a
    query that names a hyperparameter the optimizer keeps in its closures raises
    `ConstantHyperparameterError`: it is not in the state.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    >>> state = oi.set(tx.init({"w": jnp.zeros(2)}), "learning_rate", 3e-4)
    >>> oi.get(state, "learning_rate")
    Array(0.0003, dtype=float32)

    ```
    """
    if not (isinstance(placement, str) and placement in PLACEMENTS):
        raise InvalidArgumentError(
            "placement must be 'keep' (an edited leaf stays on its sharding) or 'value' (it takes "
            f"the value's sharding); got {short_repr(placement, 60)}."
        )
    if isinstance(query, Mapping):
        if value is not _UNSET:
            raise InvalidArgumentError(
                "Pass either set(tree, query, value) or set(tree, {query: value, ...})."
            )
        edits = list(query.items())
    elif value is _UNSET:
        raise InvalidArgumentError("set(tree, query, value) needs a value.")
    else:
        edits = [(query, value)]

    constants = read_optimizer(optimizer, tree).constants if optimizer is not None else []
    targets: dict[KeyPath, tuple[Any, Any]] = {}
    for edit_query, edit_value in edits:
        parsed = parse_query(edit_query)
        _refuse_constants(tree, parsed, constants)
        if every:
            matches = parsed.select(tree)
            if not matches:
                raise no_match_error(tree, parsed)
        else:
            matches = [resolve_one(tree, parsed)]
        for path, old in matches:
            if path in targets:
                raise EditConflictError(f"Two edits select the same node {path_text(path)}.")
            targets[path] = (old, edit_value)
    _refuse_overlaps(list(targets))
    _refuse_scheduled(tree, list(targets))
    restored = _restored_variables(tree, targets)
    called = {
        path: call_on(new, _as_read(old, path in restored), path) if is_function(new) else new
        for path, (old, new) in targets.items()
    }
    _refuse_schedules_changed_from_above(
        tree, {path: (targets[path][0], new) for path, new in called.items()}
    )
    new_values = {
        path: coerce(targets[path][0], new, path, call=False, restored=path in restored, placement=placement)
        for path, new in called.items()
    }
    return rebuild(tree, new_values.items())


_REGISTRY = jax.tree_util.default_registry


def _refuse_overlaps(paths: list[KeyPath]) -> None:
    """No edit inside another: each path's proper prefixes are looked up, O(total depth)."""
    edited = frozenset(paths)
    for longer in paths:
        for length in range(len(longer)):
            if longer[:length] in edited:
                raise EditConflictError(
                    f"Two edits overlap: {path_text(longer[:length])} contains {path_text(longer)}; "
                    "edit the node or its descendant, not both."
                )


def _refuse_constants(tree: Any, query: Any, constants: list[ConstantHyperparameter]) -> None:
    for path, _ in attached_matches(tree, query, constants)[:1]:
        name = str(path[-1])[1:]
        raise ConstantHyperparameterError(
            f"{name!r} at {path_text(path)} is a constant of the optimizer, held in "
            "its closures, not in the state: no value set in the state can change it. To make it "
            "settable, build the optimizer with its hyperparameters injected:\n"
            f"  >>> {inject_example(name)}"
        )


def _refuse_scheduled(tree: Any, paths: list[KeyPath]) -> None:
    for path in paths:
        slot = scheduled_slot_on(tree, path)
        if slot is not None:
            raise _scheduled_error(tree, slot)


def _refuse_schedules_changed_from_above(tree: Any, targets: dict[KeyPath, tuple[Any, Any]]) -> None:
    """Refuse an edit of an ancestor of an inject state that changes a scheduled hyperparameter
    but keeps its schedule's state: the schedule would undo it at the next update."""
    for path, (old, new) in targets.items():
        if children_with_keys(old) is None:
            continue  # a leaf holds no inject state
        for slot in scheduled_slots_under(old, path, where_at(tree, path)):
            old_value, old_schedule = value_at(tree, slot.value_path), value_at(tree, slot.schedule_path)
            new_value = _walk(new, slot.value_path[len(path) :])
            new_schedule = _walk(new, slot.schedule_path[len(path) :])
            if new_value is old_value or _same_values(new_value, old_value):
                continue
            if new_schedule is old_schedule or _same_values(new_schedule, old_schedule):
                raise _scheduled_error(tree, slot)


def _walk(node: Any, path: KeyPath) -> Any:
    for key in path:
        if node is _MISSING:
            return node
        node = child_at(node, key)
    return node


def _same_values(new: Any, old: Any) -> bool:
    """Whether two trees hold equal concrete values (a tracer is never known to be equal)."""
    if new is _MISSING:
        return False
    new_leaves, new_def = jax.tree.flatten(new)
    old_leaves, old_def = jax.tree.flatten(old)
    new_def, old_def = typing.cast(Any, new_def), typing.cast(Any, old_def)
    if new_def != old_def:
        return False
    for a, b in zip(new_leaves, old_leaves, strict=True):
        if a is b:
            continue
        if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
            return False
        try:
            if not np.array_equal(np.asarray(a), np.asarray(b)):
                return False
        except Exception:  # values that cannot be compared are not known to be equal
            return False
    return True


def _scheduled_error(tree: Any, slot: ScheduledSlot) -> ScheduledHyperparameterError:
    where = path_text(slot.value_path)
    step = schedule_step_query(structure_index(tree), slot)
    return ScheduledHyperparameterError(
        f"{slot.name!r} at {where} is driven by a schedule: optax recomputes it from the "
        "schedule at every update, so a value set here would be overwritten at the next "
        "step. To move the schedule, set its step instead:\n"
        f"  >>> state = oi.set(state, {step!r}, new_step)\n"
        "or build the optimizer with a constant (or another schedule) for it."
    )


# Coercion --------------------------------------------------------------------------------------


_FUNCTION_TYPES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    functools.partial,
    np.ufunc,
)


def is_function(value: Any) -> bool:
    """Whether `set` calls `value` on the old node: a plain function, lambda, method, builtin,
    `functools.partial`, NumPy ufunc or jitted function that JAX treats as a leaf. A pytree node
    (an `eqx.Module`, an nnx Module, a flax struct, `jax.tree_util.Partial`) is always a value,
    even if it is callable, and so is any other object."""
    if not callable(value):  # arrays and numbers: the common case, decided without a protocol check
        return False
    if not isinstance(value, _FUNCTION_TYPES) and not _is_jitted(value):
        return False
    return children_with_keys(value) is None


def _is_jitted(value: Any) -> bool:
    """A jitted function or a `jax.numpy` ufunc."""
    return isinstance(value, jnp.ufunc | jax.stages.Wrapped) or type(value).__name__ == "PjitFunction"


def call_on(function: Any, old: Any, path: KeyPath) -> Any:
    """`function(old)`, refusing a deleted array first (calling would fail without a path)."""
    if is_deleted(old):
        raise DeletedArrayError(
            f"The array at {path_text(path)} was deleted (donated to a jitted function?): a function "
            "cannot be called on it. Set a value instead, or use the state the jitted call returned."
        )
    return function(old)


def coerce(
    old: Any,
    new: Any,
    path: KeyPath = (),
    *,
    call: bool = True,
    restored: bool = False,
    placement: Placement = "keep",
) -> Any:
    """`new` made to stand where `old` stands: same structure, and each leaf as `cast_leaf` makes it
    (with `placement`).

    Functions in `new` (see `is_function`) are called on the old node they stand for. With
    `restored`, a `{"value": leaf}` dict in `old` is an nnx Variable restored without its target
    (`StructureIndex.variables`): a leaf for it is its value. Iterative, so that any depth JAX
    can flatten is fine.
    """
    return build((old, new, path, call, restored, placement), _expand)


def _as_read(old: Any, restored: bool) -> Any:
    """The node a function given to `set` is called on: as `get` returns it, with arrays in place
    of nnx Variables."""
    if restored or is_variable(old) or any(map(is_variable, jax.tree.leaves(old, is_leaf=is_variable))):
        return without_variables(old, restored)
    return old


def _restored_variables(tree: Any, targets: dict[KeyPath, tuple[Any, Any]]) -> frozenset[KeyPath]:
    """The targets that are, or hold, nnx Variables restored without their target (as `get`
    reads them); the tree is indexed only where a target is a dict."""
    if not any(type(old) is dict for old, _ in targets.values()):
        return frozenset()
    index = structure_index(tree)
    if not index.restored_variables:
        return frozenset()
    numbers = {path: index.number_of(path) for path in targets}
    return frozenset(
        path
        for path, node in numbers.items()
        if node is not None and any(index.variables[node : node + index.sizes[node]])
    )


def _expand(item: tuple[Any, Any, KeyPath, bool, bool, Placement]) -> Expanded:
    """One node of a coercion: its cast leaf, or the old node with the children to coerce."""
    old, new, path, call, restored, placement = item
    if call and is_function(new):
        new = call_on(new, old, path)
    if is_variable(old) and not is_variable(new):
        children = children_with_keys(old)
        if children is None:  # flax before 0.11: a Variable is a leaf to JAX
            return Built(variable_with_value(old, cast_leaf(unwrap(old), new, path, placement=placement)))
        [(key, inner)] = children
        return old, [(key, (inner, new, (*path, key), True, restored, placement))]
    if restored and is_restored_variable(old) and children_with_keys(new) is None:
        # a Variable restored without its target (`{"value": leaf}`): its value is set
        key = DictKey(RESTORED_VARIABLE_KEY)
        return old, [(key, (old[RESTORED_VARIABLE_KEY], new, (*path, key), True, restored, placement))]
    old_children = children_with_keys(old)
    if old_children is None:
        return Built(cast_leaf(old, new, path, placement=placement))
    new_children = children_with_keys(new)
    problem = _one_level_difference(old, old_children, new, new_children)
    if problem:
        raise StructureError(
            f"The value for {path_text(path)} must have the structure of the node it replaces; {problem}"
        )
    assert new_children is not None
    return old, [
        (key, (o, n, (*path, key), True, restored, placement))
        for (key, o), (_, n) in zip(old_children, new_children, strict=True)
    ]


def _one_level_difference(
    old: Any,
    old_children: list[tuple[KeyEntry, Any]],
    new: Any,
    new_children: list[tuple[KeyEntry, Any]] | None,
) -> str:
    """What differs between `old` and `new` at this level, or "" when their nodes agree."""
    if new_children is None or type(old) is not type(new):
        return f"it is a {type(old).__name__}, the value a {bounded(type(new).__name__, 60)}."
    old_keys, new_keys = [k for k, _ in old_children], [k for k, _ in new_children]
    if old_keys != new_keys:
        missing = ", ".join(str(k) for k in old_keys if k not in new_keys) or "none"
        extra = ", ".join(str(k) for k in new_keys if k not in old_keys) or "none"
        return bounded(f"the keys differ: missing {missing}; unexpected {extra}.", 300)
    try:
        same = bool(_REGISTRY.flatten_one_level(old)[1] == _REGISTRY.flatten_one_level(new)[1])
    except Exception:  # aux data whose == raises or is not a bool
        same = False
    return "" if same else "the node's static data differs."
