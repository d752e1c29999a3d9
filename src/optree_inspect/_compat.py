"""What differs between the JAX and flax versions this package supports (see
`docs/compatibility.md`), and the one private JAX call it makes, each with its reason.

Nothing else in the package branches on a version or imports from `jax._src`.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np
from jax import lax


def is_nnx_variable_type(kind: type) -> bool:
    """Whether `kind` is an nnx Variable (flax is imported only by code that made one)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and issubclass(kind, nnx.Variable)


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
