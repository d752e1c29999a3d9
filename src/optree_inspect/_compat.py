"""What differs between the JAX and flax versions this package supports (see
`docs/compatibility.md`), and the one private JAX call it makes, each with its reason.

No module tests a version number, and no other imports from `jax._src`. A few others handle a
version's behaviour where they meet it, with a comment naming the version: `_registry` repairs
jax 0.10.2's NamedTuple keys, the leaf and tree code unwraps an nnx Variable that flax before 0.11
keeps as a leaf, `_optax` reads optax 0.2.8's closures and skips factories an older optax lacks,
and `_checkpoint` falls back to orbax's own reading for another layout.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def is_nnx_variable_type(kind: type) -> bool:
    """Whether `kind` is an nnx Variable (flax is imported only by code that made one), or the
    `VariableState` that `nnx.state` holds in its place before flax 0.11."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return False
    # vars(), not getattr: flax 0.12 warns on a read of its deprecated alias `VariableState`
    return issubclass(kind, (nnx.Variable, vars(nnx).get("VariableState", nnx.Variable)))


RESTORED_VARIABLE_KEY = "value"
"""The key under which orbax restores an nnx Variable's value when it restores `nnx.state(...)`
without a target: each Variable becomes `{"value": array}` (flax 0.11 and later)."""


def variable_value(variable: Any) -> Any:
    """The array an nnx Variable holds: `get_value()` from flax 0.12.1, `.value` before."""
    getter = getattr(variable, "get_value", None)
    return getter() if getter is not None else variable.value


def variable_with_value(variable: Any, value: Any) -> Any:
    """A copy of the Variable, with its type and metadata, holding `value`.

    From flax 0.11 a Variable is a pytree node whose child is its value, and the package rebuilds
    it through JAX's registry; before, it is a leaf to JAX, and `replace` makes the copy.
    """
    return variable.replace(value=value)


def partition_spec_text(spec: Any) -> str:
    """`P('data',)` on every JAX version (jax 0.9 changed PartitionSpec's repr to this form)."""
    axes = [repr(axis) for axis in spec]
    return f"P({', '.join(axes)}{',' if len(axes) == 1 else ''})"


def weakly_typed_like(old: Any, value: Any) -> jax.Array:
    """`value` as a weakly typed array of the weakly typed `old`'s dtype and shape, as a Python
    scalar would give.

    A concrete scalar takes the public route: `lax.full_like(old, value)` keeps `old`'s weak type
    (not an abstract `old`'s: a `jax.ShapeDtypeStruct` takes the private route below). No public
    API makes a non-scalar array weakly typed, so that case calls JAX's private
    `_convert_element_type`, the function `jnp.asarray` itself uses for weak types.
    """
    if np.ndim(old) == 0 and not isinstance(old, jax.ShapeDtypeStruct):
        return lax.full_like(old, value)
    from jax._src.lax import lax as lax_internal

    result = lax_internal._convert_element_type(value, np.dtype(old.dtype), weak_type=True)
    return result


def host_array(value: Any, dtype: Any) -> np.ndarray:
    """`np.asarray(value, dtype)`, rounded once on every ml_dtypes version.

    ml_dtypes before 0.7 casts a 64-bit value (float64, int64, uint64, a Python float or int) to
    its float types (`bfloat16`, `float8_*`) through float32, rounding twice (float64
    `1 + 2**-8 + 2**-40` becomes bfloat16 1.0, not the nearest, 1.0078125), and refuses a Python int
    outside int64's range. Such a value is first rounded to float32 *to odd* (toward zero, with the
    last bit set where set bits were dropped), from which the cast rounds as from the value itself:
    float32 keeps 24 significant bits, and these types at most 8. NumPy's own dtypes cast directly.
    """
    dtype = np.dtype(dtype)
    if dtype.char in np.typecodes["AllFloat"] or not jnp.issubdtype(dtype, jnp.floating):
        return np.asarray(value, dtype=dtype)
    if type(value) is int and not -(2**63) <= value < 2**63:
        dropped = abs(value).bit_length() - 53
        kept = abs(value) >> dropped
        kept |= int(kept << dropped != abs(value))  # to odd: exact in float64, and no tie is made
        value = math.copysign(math.ldexp(kept, dropped), value)
    array = np.asarray(value)
    if array.dtype.kind in "iu" and array.dtype.itemsize >= 4:
        array = _ints_to_odd_float32(array)
    elif array.dtype.kind == "f" and array.dtype.itemsize > 4:
        array = _floats_to_odd_float32(array.astype(np.float64))
    return array.astype(dtype)


def _floats_to_odd_float32(values: np.ndarray) -> np.ndarray:
    nearest = values.astype(np.float32)
    wide = nearest.astype(np.float64)
    truncated = np.where(np.abs(wide) > np.abs(values), np.nextafter(nearest, np.float32(0)), nearest)
    inexact = (wide != values) & ~np.isnan(values)
    return np.asarray(truncated.view(np.uint32) | inexact.astype(np.uint32)).view(np.float32)


def _ints_to_odd_float32(values: np.ndarray) -> np.ndarray:
    negative = values < 0
    magnitude = np.where(negative, (~values).astype(np.uint64) + np.uint64(1), values.astype(np.uint64))
    bits = np.frexp(magnitude.astype(np.float64))[1]  # the bit length, or one more
    dropped = np.maximum(bits - 24, 0).astype(np.uint64)
    kept = magnitude >> dropped
    kept |= ((kept << dropped) != magnitude).astype(np.uint64)
    odd = np.ldexp(kept.astype(np.float64), dropped.astype(np.int32))  # exact: at most 24 bits
    return np.where(negative, -odd, odd).astype(np.float32)
