"""Editing: `set`, and coercing new values to the leaves they replace (README: The verbs)."""

from __future__ import annotations

import copy
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._compat import host_array, is_nnx_variable_type, variable_value, variable_with_value, weakly_typed_like
from ._errors import (
    ConstantHyperparameterError,
    DeletedArrayError,
    EditConflictError,
    InvalidArgumentError,
    LeafTypeError,
    ScheduledHyperparameterError,
    StructureError,
    bounded,
    raised_here,
    short_repr,
)
from ._keys import KeyEntry, KeyPath, path_text
from ._optax.closures import ConstantHyperparameter, Optimizer, read_optimizer
from ._optax.states import (
    ScheduledSlot,
    inject_example,
    schedule_step_query,
    scheduled_slot_on,
    scheduled_slots_under,
    where_at,
)
from ._query import Query, parse_query
from ._registry import DICT_TYPES, children_with_keys, is_namedtuple
from ._resolve import _UNSET, attached_matches, no_match_error, resolve_one
from ._tree import _MISSING, child_at, structure_index, value_at

_PYTHON_SCALARS = (bool, int, float, complex)


@overload
def set(
    tree: PyTree, query: Query, value: Any, /, *, every: bool = ..., optimizer: Optimizer | None = ...
) -> PyTree: ...


@overload
def set(
    tree: PyTree, query: Mapping[Query, Any], /, *, every: bool = ..., optimizer: Optimizer | None = ...
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
) -> PyTree:
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
    called = {
        path: call_on(new, old, path) if is_function(new) else new for path, (old, new) in targets.items()
    }
    _refuse_schedules_changed_from_above(
        tree, {path: (targets[path][0], new) for path, new in called.items()}
    )
    new_values = {path: coerce(targets[path][0], new, path, call=False) for path, new in called.items()}
    return _rebuild(tree, list(new_values.items()))


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
    if isinstance(old, jax.Array) and not isinstance(old, jax.core.Tracer) and old.is_deleted():
        raise DeletedArrayError(
            f"The array at {path_text(path)} was deleted (donated to a jitted function?): a function "
            "cannot be called on it. Set a value instead, or use the state the jitted call returned."
        )
    return function(old)


class _Frame:
    """A node of the value being coerced: the old node, its path, its children done and to do."""

    __slots__ = ("done", "old", "path", "pending")

    def __init__(self, old: Any, path: KeyPath, pending: list[tuple[KeyEntry, Any, Any]]) -> None:
        self.old, self.path, self.pending = old, path, pending
        self.done: dict[KeyEntry, Any] = {}


def coerce(old: Any, new: Any, path: KeyPath = (), *, call: bool = True) -> Any:
    """`new` made to stand where `old` stands: same structure, and each leaf as `coerce_leaf` makes it.

    Functions in `new` (see `is_function`) are called on the old node they stand for. Iterative,
    so that any depth JAX can flatten is fine.
    """
    stack: list[_Frame] = []
    item: Any = _enter(old, new, path, call)
    while True:
        if isinstance(item, _Frame):
            stack.append(item)
        elif not stack:
            return item.value
        else:
            top = stack[-1]
            top.done[top.pending.pop()[0]] = item.value
        top = stack[-1]
        if top.pending:
            key, old_child, new_child = top.pending[-1]
            item = _enter(old_child, new_child, (*top.path, key), True)
        else:
            stack.pop()
            item = _Replacement(_replace_children(top.old, top.done))


def _enter(old: Any, new: Any, path: KeyPath, call: bool) -> _Frame | _Replacement:
    if call and is_function(new):
        new = call_on(new, old, path)
    if is_nnx_variable_type(type(old)) and not is_nnx_variable_type(type(new)):
        children = children_with_keys(old)
        if children is None:  # flax before 0.11: a Variable is a leaf to JAX
            return _Replacement(variable_with_value(old, coerce_leaf(variable_value(old), new, path)))
        [(key, inner)] = children
        return _Frame(old, path, [(key, inner, new)])
    old_children = children_with_keys(old)
    if old_children is None:
        return _Replacement(coerce_leaf(old, new, path))
    new_children = children_with_keys(new)
    problem = _one_level_difference(old, old_children, new, new_children)
    if problem:
        raise StructureError(
            f"The value for {path_text(path)} must have the structure of the node it replaces; {problem}"
        )
    assert new_children is not None
    pairs = [(key, o, n) for (key, o), (_, n) in zip(old_children, new_children, strict=True)]
    return _Frame(old, path, pairs[::-1])


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


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "shape")


def _dtype_of(value: Any, path: KeyPath) -> np.dtype:
    if isinstance(value, _PYTHON_SCALARS):
        return np.dtype(type(value))  # a Python scalar counts by its type alone, as weak types do
    if _is_array_like(value):
        try:
            return np.dtype(value.dtype)
        except TypeError:
            pass
    else:
        try:
            return np.dtype(jnp.asarray(value).dtype)
        except Exception:  # JAX's message repeats the value, however large: say it briefly
            pass
    raise LeafTypeError(
        f"The value for the array leaf at {path_text(path)} is not a number or an array: {short_repr(value)}."
    )


def coerce_leaf(old: Any, new: Any, path: KeyPath = ()) -> Any:
    """`new` with the dtype, weak type, shape and sharding of the leaf `old`."""
    if isinstance(new, jax.Array) and not isinstance(new, jax.core.Tracer) and new.is_deleted():
        raise DeletedArrayError(
            f"The value for the leaf at {path_text(path)} is a deleted (donated) array: it holds no "
            "data to store. Pass the array the donating step returned."
        )
    if children_with_keys(new) is not None:
        raise StructureError(
            f"The node at {path_text(path)} is a leaf ({bounded(type(old).__name__, 60)}); the value is "
            f"a {bounded(type(new).__name__, 60)}, a subtree. Select a node of that structure instead."
        )
    if isinstance(old, jax.ShapeDtypeStruct):
        if isinstance(new, jax.ShapeDtypeStruct) and new.shape == old.shape and new.dtype == old.dtype:
            return new
        raise LeafTypeError(
            f"The leaf at {path_text(path)} is abstract (a jax.ShapeDtypeStruct, as jax.eval_shape "
            "makes): it holds no value to change. Set it on a concrete state, or give a "
            "ShapeDtypeStruct of the same shape and dtype."
        )
    if isinstance(old, _PYTHON_SCALARS) and not isinstance(new, jax.core.Tracer):
        old_dtype = np.dtype(type(old))
        _check_kind(old_dtype, new, path)
        _check_shape((), np.shape(new), path)
        if type(old) is not int:  # a Python int has no range
            _check_range(old_dtype, new, path)
        try:
            return type(old)(np.asarray(new).item())
        except OverflowError:
            raise _out_of_range(old_dtype, new, path) from None
    if isinstance(old, _PYTHON_SCALARS):
        old = jnp.asarray(old)
    if not _is_array_like(old):
        if type(new) is not type(old):
            raise LeafTypeError(
                f"The leaf at {path_text(path)} is a {bounded(type(old).__name__, 60)}, not an array; it "
                f"takes only another of its type, got {bounded(type(new).__name__, 60)}."
            )
        return new
    dtype = old.dtype
    if jnp.issubdtype(dtype, jax.dtypes.extended):
        new_dtype = getattr(new, "dtype", None)
        if new_dtype != dtype or np.shape(new) != old.shape:
            raise LeafTypeError(
                f"The leaf at {path_text(path)} is a {dtype}{list(old.shape)} key; got {new_dtype}."
            )
        return new
    _check_kind(np.dtype(dtype), new, path)
    _check_shape(old.shape, _shape_of(new, path), path)
    weak = bool(getattr(_aval(old), "weak_type", False))
    if isinstance(old, jax.core.Tracer) or isinstance(new, jax.core.Tracer):
        value = new
        if not isinstance(new, jax.core.Tracer | jax.Array):  # a host value: checked and cast as outside jit
            _check_range(np.dtype(dtype), new, path)
            value = host_array(new, dtype)
        result = jnp.broadcast_to(jax.lax.convert_element_type(jnp.asarray(value), dtype), old.shape)
        return weakly_typed_like(old, result) if weak else result
    if _on_devices(old, new):
        return _coerced_on_device(old, new, weak, path)
    _check_range(np.dtype(dtype), new, path)
    if isinstance(old, np.ndarray):
        return np.broadcast_to(host_array(new, dtype), old.shape).copy()
    if isinstance(old, np.generic):
        return host_array(new, dtype)[()]
    host = np.broadcast_to(host_array(new, dtype), old.shape)
    return _placed_like(old, host, weak, path)


def _on_devices(old: Any, new: Any) -> bool:
    """A JAX array value for a JAX array leaf, both on this process's devices: coerce it there."""
    return (
        isinstance(new, jax.Array)
        and isinstance(old, jax.Array)
        and new.is_fully_addressable
        and old.is_fully_addressable
    )


def _coerced_on_device(old: jax.Array, new: jax.Array, weak: bool, path: KeyPath) -> jax.Array:
    """`new` cast, broadcast and placed like `old` without a trip through host memory: no implicit
    transfer (it works under `jax.transfer_guard("disallow")`) and no blocking of async dispatch,
    but for the one boolean a narrowing cast's range check reads, fetched explicitly."""
    _check_range_on_device(np.dtype(old.dtype), new, path)
    result = jax.lax.convert_element_type(new, old.dtype)
    if result.shape != old.shape:
        result = jnp.broadcast_to(result, old.shape)
    if weak:
        result = weakly_typed_like(old, result)
    if old.committed or result.sharding != old.sharding:
        result = jax.device_put(result, old.sharding)
    return result


def _limits(dtype: np.dtype) -> tuple[float, float] | None:
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return int(info.min), int(info.max)
    if jnp.issubdtype(dtype, jnp.floating):
        largest = float(jnp.finfo(dtype).max)
        return -largest, largest
    if dtype == np.bool_:
        return 0, 1
    return None


def _check_range_on_device(dtype: np.dtype, new: jax.Array, path: KeyPath) -> None:
    """The range check of `_check_range`, computed where `new` lives; nothing is read when every
    value of `new`'s dtype fits in `dtype` (the common case: a moment set with its own dtype)."""
    source, target = _limits(np.dtype(new.dtype)), _limits(dtype)
    if source is None or target is None or (source[0] >= target[0] and source[1] <= target[1]):
        return
    low = target[0] if source[0] < target[0] else None
    high = target[1] if source[1] > target[1] else None
    if bool(jax.device_get(_outside(new, low=low, high=high))):
        raise _out_of_range(
            dtype, None, path, _shown_limits(dtype, target), what=f"A {new.dtype} array value has values"
        )


@functools.partial(jax.jit, static_argnames=("low", "high"))
def _outside(values: jax.Array, low: float | None, high: float | None) -> jax.Array:
    """Whether any finite value is below `low` or above `high`: compiled with the bounds as
    constants, so that nothing is sent to the device."""
    if jnp.issubdtype(values.dtype, jnp.floating):
        # compared in at least float32: a bound such as float16's 65504 rounds to 65536 in bfloat16
        values = values.astype(jnp.promote_types(values.dtype, jnp.float32))
        values = jnp.where(jnp.isfinite(values), values, jnp.zeros_like(values))  # inf and nan as given
    outside = jnp.zeros(values.shape, bool)
    if low is not None:
        outside = outside | (values < low)
    if high is not None:
        outside = outside | (values > high)
    return jnp.any(outside)


def _shown_limits(dtype: np.dtype, limits: tuple[float, float]) -> tuple[Any, Any]:
    if jnp.issubdtype(dtype, jnp.integer):
        return int(limits[0]), int(limits[1])
    return f"{limits[0]:.6g}", f"{limits[1]:.6g}"


def _aval(leaf: Any) -> Any:
    try:
        return jax.typeof(leaf)
    except Exception:  # not a JAX type (a NumPy array is never weak)
        return None


def _shape_of(value: Any, path: KeyPath) -> tuple[int, ...]:
    try:
        return tuple(np.shape(value))
    except Exception:  # a ragged nested list, say
        raise LeafTypeError(
            f"The value for the array leaf at {path_text(path)} has no array shape: {short_repr(value)}."
        ) from None


def _host_values(value: Any) -> np.ndarray | None:
    """The value as a NumPy array wide enough to compare with any dtype's range, or None where it
    cannot be read here (another process's shards)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return np.asarray(value, dtype=object)
    try:
        array = np.asarray(value)
    except Exception:  # no array reading: the kind check has already refused what cannot be stored
        return None
    if array.dtype.kind in "biuf" and array.dtype.itemsize <= 8:
        return array
    if array.dtype.kind in "biuf":
        return array.astype(np.float64)
    return array


def _check_range(dtype: np.dtype, new: Any, path: KeyPath) -> None:
    """Refuse a concrete value that `dtype` cannot hold: it would wrap (integers) or become inf."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        values = _host_values(new)
        if values is not None and values.size:
            real = np.dtype(jnp.finfo(dtype).dtype)
            _check_range(real, np.real(values), path)
            _check_range(real, np.imag(values), path)
        return
    limits = _limits(dtype)
    values = _host_values(new)
    if limits is None or dtype == np.bool_ or values is None or values.size == 0 or values.dtype.kind == "c":
        return
    if jnp.issubdtype(dtype, jnp.integer):
        low, high = int(values.min()), int(values.max())  # Python ints: no NumPy promotion rules
        if low < limits[0] or high > limits[1]:
            raise _out_of_range(dtype, low if low < limits[0] else high, path, _shown_limits(dtype, limits))
        return
    try:
        finite = values.astype(np.float64)
    except OverflowError:  # a Python int beyond any float
        raise _out_of_range(dtype, new, path) from None
    finite = finite[np.isfinite(finite)]
    if finite.size and float(np.abs(finite).max()) > limits[1]:
        raise _out_of_range(dtype, float(np.abs(finite).max()), path, _shown_limits(dtype, limits))


def _out_of_range(
    dtype: np.dtype, value: Any, path: KeyPath, bounds: tuple[Any, Any] | None = None, what: str = ""
) -> StructureError:
    limits = ""
    if bounds and isinstance(bounds[0], int):
        limits = f" (it holds {bounds[0]:,} to {bounds[1]:,})"
    elif bounds:
        limits = f" (it holds {bounds[0]} to {bounds[1]})"
    what = what or f"The value {short_repr(value, 40)} is"
    return StructureError(
        f"{what} out of range for the {dtype} leaf at {path_text(path)}{limits}: it would wrap or "
        "become inf. Clip it first if that is what you mean."
    )


def _kind_rank(dtype: Any) -> int:
    """bool < integer < floating < complex: a same-kind cast never moves up this order."""
    for rank, kind in enumerate((jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating)):
        if jnp.issubdtype(dtype, kind):
            return rank
    return 9


def _check_kind(dtype: np.dtype, new: Any, path: KeyPath) -> None:
    new_dtype = _dtype_of(new, path)
    if _kind_rank(new_dtype) > _kind_rank(dtype):
        name = type(new).__name__ if isinstance(new, _PYTHON_SCALARS) else str(new_dtype)
        raise LeafTypeError(
            f"Cannot store a {name} value in the {dtype} leaf at {path_text(path)}: that would "
            "change its kind. Cast the value first if that is what you mean."
        )


def _check_shape(shape: tuple[int, ...], new_shape: tuple[int, ...], path: KeyPath) -> None:
    if new_shape not in ((), shape):
        raise StructureError(
            f"The leaf at {path_text(path)} has shape {shape}; a value of shape "
            f"{bounded(str(new_shape), 60)} would change it (only scalars broadcast)."
        )


def _placed_like(old: jax.Array, host: np.ndarray, weak: bool, path: KeyPath) -> jax.Array:
    """`host` as a jax.Array placed as `old` is: same sharding and commitment."""
    sharding = old.sharding
    if not sharding.is_fully_addressable:
        # Multi-process: each process builds only its own shards, reading no remote data.
        global_array = jax.make_array_from_callback(old.shape, sharding, lambda index: host[index])
        return weakly_typed_like(old, global_array) if weak else global_array
    result: jax.Array = jnp.asarray(host)
    if weak:
        result = weakly_typed_like(old, result)
    if old.committed:
        result = jax.device_put(result, sharding)
    return result


# Rebuilding ------------------------------------------------------------------------------------


def _rebuild(tree: Any, edits: list[tuple[KeyPath, Any]]) -> Any:
    """`tree` with each edit applied; only the spine from the root to each edited node is new.

    Iterative, so that any depth JAX can flatten is fine.
    """
    for path, value in edits:
        if not path:
            return value
    spine: dict[KeyEntry, Any] = {}  # key -> nested dict of the spine below, or a _Replacement
    for path, value in edits:
        level = spine
        for key in path[:-1]:
            level = level.setdefault(key, {})
        level[path[-1]] = _Replacement(value)
    # Each frame: the node, its part of the spine, the children rebuilt so far, the keys left.
    stack: list[tuple[Any, dict[KeyEntry, Any], dict[KeyEntry, Any], list[KeyEntry]]] = [
        (tree, spine, {}, list(spine))
    ]
    while True:
        node, level, done, pending = stack[-1]
        if pending:
            key = pending[-1]
            entry = level[key]
            if isinstance(entry, _Replacement):
                done[key] = entry.value
                pending.pop()
            else:
                stack.append((child_at(node, key), entry, {}, list(entry)))
            continue
        rebuilt = _replace_children(node, done)
        stack.pop()
        if not stack:
            return rebuilt
        _, _, parent_done, parent_pending = stack[-1]
        parent_done[parent_pending.pop()] = rebuilt


class _Replacement:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _replace_children(node: Any, replacements: Mapping[KeyEntry, Any]) -> Any:
    """A copy of `node` with some children replaced, rebuilt as JAX's registry rebuilds it."""
    kind = type(node)
    if kind in DICT_TYPES:
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
