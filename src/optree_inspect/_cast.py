"""The one cast: a value made to stand where a leaf stands, as `set` and `restore_like` make it.

A value keeps the leaf's kind (a same-kind cast such as float64 to float32 is made; float into int
is refused), range (a value the dtype cannot hold is refused, not wrapped or made inf), shape (a
scalar broadcasts), dtype, weak type and sharding; a Python scalar leaf stays a Python scalar of its
type, a NumPy leaf a NumPy value. With `placement="value"` a `jax.Array` leaf takes the value's
sharding and commitment instead (`set`'s `placement=`).

>>> import jax.numpy as jnp, numpy as np
>>> cast_leaf(jnp.zeros(2), np.float64(1.5))
Array([1.5, 1.5], dtype=float32)
>>> cast_leaf(jax.ShapeDtypeStruct((), jnp.float32), 2.0, fill=True)
Array(2., dtype=float32)
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._compat import host_array, weakly_typed_like
from ._errors import (
    DeletedArrayError,
    InvalidArgumentError,
    LeafTypeError,
    StructureError,
    bounded,
    short_repr,
)
from ._keys import KeyPath, path_text
from ._leaf import PYTHON_SCALARS, at_least_float32, is_deleted, is_weak, sharding_of
from ._placement import is_abstract_mesh
from ._registry import children_with_keys

Placement = Literal["keep", "value"]
"""Where a cast `jax.Array` leaf is placed: on its own sharding ("keep") or on the value's ("value")."""
PLACEMENTS: tuple[Placement, ...] = ("keep", "value")


def stands_as(value: Any, new: Any) -> bool:
    """Whether `value` already stands where `new` stands as `set` would cast it: a concrete
    `jax.Array` of the same shape, dtype, weak type and sharding (so no cast and no transfer)."""
    return (
        type(value) is type(new)
        and isinstance(value, jax.Array)
        and not isinstance(value, jax.core.Tracer)
        and value.shape == new.shape
        and value.dtype == new.dtype
        and getattr(value, "weak_type", False) == getattr(new, "weak_type", False)
        and not value.is_deleted()
        and value.sharding == new.sharding
    )


def cast_leaf(
    old: Any, new: Any, path: KeyPath = (), *, fill: bool = False, placement: Placement = "keep"
) -> Any:
    """`new` with the dtype, weak type, shape and sharding of the leaf `old`, or the error that
    names `path` and says why it cannot be.

    With `placement="value"` a concrete `jax.Array` leaf takes `new`'s sharding and commitment
    instead, and `new` must be a `jax.Array` (`InvalidArgumentError` otherwise); a traced leaf or
    value, a host leaf and an abstract leaf are cast as with "keep".

    An abstract `old` (a `jax.ShapeDtypeStruct`) holds no value to change: it takes only a
    `ShapeDtypeStruct` of its shape and dtype. With `fill=True` it is a target to fill, as
    `restore_like` fills an abstract `like`: a value gives an array placed as `old` says, weak type
    kept, and an abstract value whose dtype casts gives `old` itself.
    """
    if fill and isinstance(old, jax.ShapeDtypeStruct):
        return _filled(old, new, path)
    return _cast(old, new, path, placement)


def _filled(old: jax.ShapeDtypeStruct, new: Any, path: KeyPath) -> Any:
    """`new` cast to an array of the abstract `old`, placed on its sharding if it has one."""
    sharding = sharding_of(old)
    if sharding is not None and is_abstract_mesh(sharding):
        sharding = None
    if jax.dtypes.issubdtype(old.dtype, jax.dtypes.extended):
        if getattr(new, "dtype", None) != old.dtype:
            raise LeafTypeError(
                f"The leaf at {path_text(path)} is a {old.dtype} key; the checkpoint holds "
                f"{bounded(str(getattr(new, 'dtype', type(new).__name__)), 60)}."
            )
        if isinstance(new, jax.ShapeDtypeStruct):
            return old
        array = new if isinstance(new, jax.Array) else jnp.asarray(new)
    elif isinstance(new, jax.Array) and not new.is_fully_addressable:  # cast where its shards live
        _check_kind(np.dtype(old.dtype), new, path)
        _check_shape(old.shape, new.shape, path)
        _check_range_on_device(np.dtype(old.dtype), new, path)
        array = jnp.broadcast_to(jax.lax.convert_element_type(new, old.dtype), old.shape)
        if old.weak_type:
            array = weakly_typed_like(old, array)
    else:
        zero = np.zeros((), old.dtype)
        if isinstance(new, jax.ShapeDtypeStruct):
            _cast(zero, np.zeros((), new.dtype), path)  # the dtype rule only: no values to check
            return old
        array = jnp.asarray(_cast(np.broadcast_to(zero, old.shape), new, path))
        if old.weak_type:
            array = weakly_typed_like(old, array)
    return array if sharding is None else placed(array, sharding)


def _cast(old: Any, new: Any, path: KeyPath, placement: Placement = "keep") -> Any:
    """`cast_leaf` without filling: an abstract `old` takes only its own `ShapeDtypeStruct`."""
    if is_deleted(new):
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
    if isinstance(old, PYTHON_SCALARS) and not isinstance(new, jax.core.Tracer):
        old_dtype = np.dtype(type(old))
        _check_kind(old_dtype, new, path)
        _check_shape((), np.shape(new), path)
        if type(old) is not int:  # a Python int has no range
            _check_range(old_dtype, new, path)
        try:
            return type(old)(np.asarray(new).item())
        except OverflowError:
            raise _out_of_range(old_dtype, new, path) from None
    if isinstance(old, PYTHON_SCALARS):
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
    weak = is_weak(old)
    if isinstance(old, jax.core.Tracer) or isinstance(new, jax.core.Tracer):
        value = new
        if not isinstance(new, jax.core.Tracer | jax.Array):  # a host value: checked and cast as outside jit
            _check_range(np.dtype(dtype), new, path)
            value = host_array(new, dtype)
        result = jnp.broadcast_to(jax.lax.convert_element_type(jnp.asarray(value), dtype), old.shape)
        return weakly_typed_like(old, result) if weak else result
    if placement == "value" and isinstance(old, jax.Array):
        return _placed_like_value(old, new, weak, path)
    if _on_devices(old, new):
        return _coerced_on_device(old, new, weak, path)
    new = _readable_here(new, path)
    _check_range(np.dtype(dtype), new, path)
    if isinstance(old, np.ndarray):
        return np.broadcast_to(host_array(new, dtype), old.shape).copy()
    if isinstance(old, np.generic):
        return host_array(new, dtype)[()]
    host = np.broadcast_to(host_array(new, dtype), old.shape)
    return _placed_like(old, host, weak, path)


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "shape")


def _dtype_of(value: Any, path: KeyPath) -> np.dtype:
    if isinstance(value, PYTHON_SCALARS):
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


def _on_devices(old: Any, new: Any) -> bool:
    """A JAX array value for a JAX array leaf, both on this process's devices or the value on
    several processes' (a global array, as every process holds it): coerce it there. A value of
    this process alone for a leaf of several processes is placed from the host, each process
    placing its own shards."""
    return (
        isinstance(new, jax.Array)
        and isinstance(old, jax.Array)
        and (not new.is_fully_addressable or old.is_fully_addressable)
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


def _readable_here(value: Any, path: KeyPath) -> Any:
    """`value`, or this process's copy of a replicated array of several processes; an array whose
    shards this process does not all hold is refused, as its values cannot be read here."""
    if not isinstance(value, jax.Array) or value.is_fully_addressable:
        return value
    if value.is_fully_replicated and value.addressable_shards:
        return value.addressable_data(0)
    raise InvalidArgumentError(
        f"The value for the leaf at {path_text(path)} is a jax.Array sharded over several processes; "
        "the leaf is a host value (a NumPy array or a Python scalar) that would need all of it here. "
        "Gather it first (jax.experimental.multihost_utils.process_allgather) or set a jax.Array leaf."
    )


def _placed_like_value(old: jax.Array, new: Any, weak: bool, path: KeyPath) -> jax.Array:
    """`new` cast and broadcast like `old` but left on `new`'s sharding and commitment, on the
    devices: nothing is read to the host but for a narrowing cast's range check (one boolean), so
    a value of several processes' shards works too."""
    if not isinstance(new, jax.Array):
        raise InvalidArgumentError(
            f"placement='value' puts the leaf at {path_text(path)} where its value is placed, but "
            f"the value is a {bounded(type(new).__name__, 60)}, which has no placement. Place it "
            "first, with jax.device_put(value, sharding), or pass placement='keep'."
        )
    # a scalar value's sharding (replicated, or one device) places the broadcast leaf of any shape
    sharding = new.sharding
    _check_range_on_device(np.dtype(old.dtype), new, path)
    result = jax.lax.convert_element_type(new, old.dtype)
    if result.shape != old.shape:
        result = jnp.broadcast_to(result, old.shape)
    if weak:
        result = weakly_typed_like(jax.ShapeDtypeStruct(old.shape, old.dtype, weak_type=True), result)
    if result.sharding != sharding:
        result = jax.device_put(result, sharding)
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
    outside = _outside(new, low=low, high=high)  # replicated: every process reads its own copy
    if bool(jax.device_get(outside if outside.is_fully_addressable else outside.addressable_data(0))):
        raise _out_of_range(
            dtype, None, path, _shown_limits(dtype, target), what=f"A {new.dtype} array value has values"
        )


@functools.partial(jax.jit, static_argnames=("low", "high"))
def _outside(values: jax.Array, low: float | None, high: float | None) -> jax.Array:
    """Whether any finite value is below `low` or above `high`: compiled with the bounds as
    constants, so that nothing is sent to the device."""
    if jnp.issubdtype(values.dtype, jnp.floating):
        # compared in at least float32: a bound such as float16's 65504 rounds to 65536 in bfloat16
        values = values.astype(at_least_float32(values.dtype))
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
        name = type(new).__name__ if isinstance(new, PYTHON_SCALARS) else str(new_dtype)
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
    whole_here = sharding.is_fully_addressable
    result = placed(host, sharding) if old.committed or not whole_here else jnp.asarray(host)
    return weakly_typed_like(old, result) if weak else result


def placed(host: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host value (or an array of this process) placed on `sharding`. On devices of several
    processes each process builds only its own shards from its copy: nothing is sent between
    processes, and no process compares its copy with the others' (`jax.device_put` does, and
    refuses a NaN, which equals nothing). An array of several processes is moved by JAX."""
    if sharding.is_fully_addressable:
        return jax.device_put(host, sharding)
    if isinstance(host, jax.Array) and not host.is_fully_addressable:  # already of several processes
        return host if host.sharding.is_equivalent_to(sharding, host.ndim) else jax.device_put(host, sharding)
    dtype = getattr(host, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.extended):  # PRNG keys: by their data
        data = placed(jax.random.key_data(host), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(host))
    values = np.asarray(host)
    return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])
