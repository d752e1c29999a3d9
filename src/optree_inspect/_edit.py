"""Editing: `set`, and coercing new values to the leaves they replace (DESIGN.md section 3)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.lax import lax as lax_internal
from jax.tree_util import DictKey, GetAttrKey, keystr

from ._closures import ConstantHyperparameter, read_optimizer
from ._errors import ConstantHyperparameterError, ScheduledHyperparameterError, bounded
from ._optax_states import INJECT_EXAMPLE, schedule_step_query, scheduled_slot_on
from ._query import KeyEntry, KeyPath, parse_query
from ._resolve import _UNSET, constant_matches, no_match_error, resolve_all, resolve_one
from ._tree import (
    _DICT_TYPES,
    child_at,
    children_with_keys,
    is_namedtuple,
    is_nnx_variable_type,
    structure_index,
)

_PYTHON_SCALARS = (bool, int, float, complex)


def set(tree: Any, query: Any, value: Any = _UNSET, /, *, every: bool = False, optimizer: Any = None) -> Any:
    """A new tree with the node(s) that `query` selects replaced by `value`.

    **Arguments:**
    - `tree`: any JAX pytree; it is never modified.
    - `query`: any query form, or a mapping `{query: value, ...}` for several edits in one pass.
    - `value`: the new node, or a callable that takes the old node and returns the new one.
    - `every`: edit every match; otherwise each query must select exactly one node.
    - `optimizer`: the optax optimizer of the state, so that a query naming a hyperparameter it
      keeps in its closures is refused with a clear error instead of a no-match.

    **Returns:** a tree with the same treedef. An edited leaf keeps its shape (a scalar broadcasts),
    dtype (a same-kind cast such as float64 to float32 is made; float into int raises `TypeError`),
    weak type and sharding, so a jitted step that takes it does not retrace. A Python scalar leaf
    stays a Python scalar of its type when the value is concrete. A subtree takes a value of the same
    structure. `None`, `MaskedNode()` and other empty nodes take only an equal structure; a non-array
    leaf (a string, say) takes only a value of its own type. An nnx Variable stays a Variable with its
    metadata. Untouched subtrees are the same objects. A hyperparameter driven by a schedule raises
    `ScheduledHyperparameterError`. With `optimizer=`, a query that names a hyperparameter the
    optimizer keeps in its closures raises `ConstantHyperparameterError`: it is not in the state.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    >>> state = oi.set(tx.init({"w": jnp.zeros(2)}), "learning_rate", 3e-4)
    >>> oi.get(state, "learning_rate")
    Array(0.0003, dtype=float32)

    ```
    """
    if isinstance(query, Mapping):
        if value is not _UNSET:
            raise TypeError("Pass either set(tree, query, value) or set(tree, {query: value, ...}).")
        edits = list(query.items())
    elif value is _UNSET:
        raise TypeError("set(tree, query, value) needs a value.")
    else:
        edits = [(query, value)]

    constants = read_optimizer(optimizer, tree).constants if optimizer is not None else []
    targets: dict[KeyPath, tuple[Any, Any]] = {}
    for edit_query, edit_value in edits:
        parsed = parse_query(edit_query)
        _refuse_constants(tree, parsed, constants)
        if every:
            matches = resolve_all(tree, parsed)
            if not matches:
                raise no_match_error(tree, parsed)
        else:
            matches = [resolve_one(tree, parsed)]
        for path, old in matches:
            if path in targets:
                raise ValueError(f"Two edits select the same node {_path_text(path)}.")
            targets[path] = (old, edit_value)
    _refuse_overlaps(list(targets))
    _refuse_scheduled(tree, list(targets))
    new_values = {path: coerce(old, new, path) for path, (old, new) in targets.items()}
    return _rebuild(tree, list(new_values.items()), 0)


def _path_text(path: KeyPath) -> str:
    return bounded(keystr(path) or "<root>", 100)


def _refuse_overlaps(paths: list[KeyPath]) -> None:
    ordered = sorted(paths, key=len)
    for number, shorter in enumerate(ordered):
        for longer in ordered[number + 1 :]:
            if longer[: len(shorter)] == shorter:
                raise ValueError(
                    f"Two edits overlap: {_path_text(shorter)} contains {_path_text(longer)}; "
                    "edit the node or its descendant, not both."
                )


def _refuse_constants(tree: Any, query: Any, constants: list[ConstantHyperparameter]) -> None:
    for path, _ in constant_matches(tree, query, constants)[:1]:
        raise ConstantHyperparameterError(
            f"{str(path[-1])[1:]!r} at {_path_text(path)} is a constant of the optimizer, held in "
            "its closures, not in the state: no value set in the state can change it. To make it "
            "settable, build the optimizer with its hyperparameters injected:\n"
            f"  >>> {INJECT_EXAMPLE}"
        )


def _refuse_scheduled(tree: Any, paths: list[KeyPath]) -> None:
    for path in paths:
        slot = scheduled_slot_on(tree, path)
        if slot is not None:
            where = _path_text((*slot.state_path, GetAttrKey("hyperparams"), DictKey(slot.name)))
            step = schedule_step_query(structure_index(tree), slot)
            raise ScheduledHyperparameterError(
                f"{slot.name!r} at {where} is driven by a schedule: optax recomputes it from the "
                "schedule at every update, so a value set here would be overwritten at the next "
                "step. To move the schedule, set its step instead:\n"
                f"  >>> state = oi.set(state, {step!r}, new_step)\n"
                "or build the optimizer with a constant (or another schedule) for it."
            )


# Coercion --------------------------------------------------------------------------------------


def coerce(old: Any, new: Any, path: KeyPath = ()) -> Any:
    """`new` made to stand where `old` stands: same structure, and each leaf as `coerce_leaf` makes it."""
    if callable(new) and not _is_array_like(new) and not isinstance(new, type):
        new = new(old)
    if is_nnx_variable_type(type(old)) and not is_nnx_variable_type(type(new)):
        [(key, inner)] = children_with_keys(old) or []
        return _replace_children(old, {key: coerce(inner, new, (*path, key))})
    old_children = children_with_keys(old)
    if old_children is None:
        return coerce_leaf(old, new, path)
    new_children = children_with_keys(new)
    old_def: Any = jax.tree_util.tree_structure(old)
    new_def: Any = jax.tree_util.tree_structure(new)
    if new_children is None or old_def != new_def:
        raise ValueError(
            f"The value for {_path_text(path)} must have the structure of the node it replaces; "
            f"{_first_difference(old, new, path)}"
        )
    return _replace_children(
        old,
        {
            key: coerce(old_child, new_child, (*path, key))
            for (key, old_child), (_, new_child) in zip(old_children, new_children, strict=True)
        },
    )


def _first_difference(old: Any, new: Any, path: KeyPath) -> str:
    where = _path_text(path)
    old_children, new_children = children_with_keys(old), children_with_keys(new)
    if old_children is None or new_children is None or type(old) is not type(new):
        return f"at {where} it is a {type(old).__name__}, the value a {type(new).__name__}."
    old_keys, new_keys = [k for k, _ in old_children], [k for k, _ in new_children]
    if old_keys != new_keys:
        missing = ", ".join(str(k) for k in old_keys if k not in new_keys) or "none"
        extra = ", ".join(str(k) for k in new_keys if k not in old_keys) or "none"
        return bounded(f"at {where} the keys differ: missing {missing}; unexpected {extra}.", 200)
    for (key, old_child), (_, new_child) in zip(old_children, new_children, strict=True):
        if _structure(old_child) != _structure(new_child):
            return _first_difference(old_child, new_child, (*path, key))
    return f"at {where} the node's static data differs."


def _structure(tree: Any) -> Any:
    return jax.tree_util.tree_structure(tree)


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "shape")


def _dtype_of(value: Any) -> np.dtype:
    return np.dtype(value.dtype if _is_array_like(value) else jnp.asarray(value).dtype)


def coerce_leaf(old: Any, new: Any, path: KeyPath = ()) -> Any:
    """`new` with the dtype, weak type, shape and sharding of the leaf `old`."""
    if isinstance(old, _PYTHON_SCALARS) and not isinstance(new, jax.core.Tracer):
        _check_kind(np.dtype(type(old)), new, path)
        _check_shape((), np.shape(new), path)
        return type(old)(np.asarray(new).item())
    if isinstance(old, _PYTHON_SCALARS):
        old = jnp.asarray(old)
    if not _is_array_like(old):
        if type(new) is not type(old):
            raise TypeError(
                f"The leaf at {_path_text(path)} is a {type(old).__name__}, not an array; it takes "
                f"only another {type(old).__name__}, got {type(new).__name__}."
            )
        return new
    dtype = old.dtype
    if jnp.issubdtype(dtype, jax.dtypes.extended):
        new_dtype = getattr(new, "dtype", None)
        if new_dtype != dtype or np.shape(new) != old.shape:
            raise TypeError(f"The leaf at {_path_text(path)} is a {dtype}[{old.shape}] key; got {new_dtype}.")
        return new
    _check_kind(np.dtype(dtype), new, path)
    _check_shape(old.shape, np.shape(new), path)
    weak = bool(jax.typeof(old).weak_type)
    if isinstance(old, jax.core.Tracer) or isinstance(new, jax.core.Tracer):
        result = jnp.broadcast_to(jax.lax.convert_element_type(jnp.asarray(new), dtype), old.shape)
        return _weak(result, dtype) if weak else result
    if isinstance(old, np.ndarray | np.generic):
        return np.broadcast_to(np.asarray(new, dtype=dtype), old.shape).copy()[()]
    host = np.broadcast_to(np.asarray(new, dtype=dtype), old.shape)
    return _placed_like(old, host, weak)


def _kind_rank(dtype: Any) -> int:
    """bool < integer < floating < complex: a same-kind cast never moves up this order."""
    for rank, kind in enumerate((jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating)):
        if jnp.issubdtype(dtype, kind):
            return rank
    return 9


def _check_kind(dtype: np.dtype, new: Any, path: KeyPath) -> None:
    # A Python scalar counts by its type alone, as JAX's weak types do.
    new_dtype = np.dtype(type(new)) if isinstance(new, _PYTHON_SCALARS) else _dtype_of(new)
    if _kind_rank(new_dtype) > _kind_rank(dtype):
        name = type(new).__name__ if isinstance(new, _PYTHON_SCALARS) else str(new_dtype)
        raise TypeError(
            f"Cannot store a {name} value in the {dtype} leaf at {_path_text(path)}: that would "
            "change its kind. Cast the value first if that is what you mean."
        )


def _check_shape(shape: tuple[int, ...], new_shape: tuple[int, ...], path: KeyPath) -> None:
    if new_shape not in ((), shape):
        raise ValueError(
            f"The leaf at {_path_text(path)} has shape {shape}; a value of shape {new_shape} would "
            "change it (only scalars broadcast)."
        )


def _weak(value: jax.Array, dtype: Any) -> jax.Array:
    # No public API makes an array weakly typed; lax.full_like does it for scalars only.
    return lax_internal._convert_element_type(value, np.dtype(dtype), weak_type=True)


def _placed_like(old: jax.Array, host: np.ndarray, weak: bool) -> jax.Array:
    """`host` as a jax.Array placed as `old` is: same sharding and commitment."""
    sharding = old.sharding
    if not sharding.is_fully_addressable:
        # Multi-process: each process builds only its own shards, reading no remote data.
        global_array = jax.make_array_from_callback(old.shape, sharding, lambda index: host[index])
        return _weak(global_array, old.dtype) if weak else global_array
    result: jax.Array = jnp.asarray(host)
    if weak:
        result = _weak(result, old.dtype)
    if old.committed:
        result = jax.device_put(result, sharding)
    return result


# Rebuilding ------------------------------------------------------------------------------------


def _rebuild(node: Any, edits: list[tuple[KeyPath, Any]], depth: int) -> Any:
    """`node` with each edit applied; only the spine from `node` to each edited node is new."""
    if len(edits) == 1 and len(edits[0][0]) == depth:
        return edits[0][1]
    groups: dict[KeyEntry, list[tuple[KeyPath, Any]]] = {}
    for path, value in edits:
        groups.setdefault(path[depth], []).append((path, value))
    return _replace_children(
        node, {key: _rebuild(child_at(node, key), group, depth + 1) for key, group in groups.items()}
    )


def _replace_children(node: Any, replacements: Mapping[KeyEntry, Any]) -> Any:
    """A copy of `node` with some children replaced, rebuilt as JAX's registry rebuilds it."""
    kind = type(node)
    if kind in _DICT_TYPES:
        new_dict = copy.copy(node)
        for key, child in replacements.items():
            new_dict[key.key] = child
        return new_dict
    if kind is tuple or kind is list:
        items = list(node)
        for key, child in replacements.items():
            items[key.idx] = child
        return kind(items)
    if is_namedtuple(node):
        return node._replace(**{key.name: child for key, child in replacements.items()})
    children = [replacements.get(key, child) for key, child in children_with_keys(node) or ()]
    one_level: Any = jax.tree_util.tree_structure(node, is_leaf=_is_not(node))
    return one_level.unflatten(children)


def _is_not(node: Any) -> Callable[[Any], bool]:
    return lambda candidate: candidate is not node
