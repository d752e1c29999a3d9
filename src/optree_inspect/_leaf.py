"""What a leaf is: its array value behind an nnx Variable, whether it is deleted, abstract or
concrete, its dtype (weak or not), whether it holds numbers, and its short text.

Every verb asks these questions of leaves through this module, so that a deleted (donated) array,
a tracer, a `jax.ShapeDtypeStruct` and an nnx Variable get one answer everywhere.

>>> import jax.numpy as jnp
>>> short_text(jnp.zeros((2, 3))), short_text(jnp.float32(0.5)), short_text(None)
('f32[2,3]', 'f32[] = 0.5', 'None')
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._compat import RESTORED_VARIABLE_KEY, is_nnx_variable_type, partition_spec_text, variable_value
from ._errors import bounded

_DTYPE_NAMES = {"float": "f", "bfloat": "bf", "int": "i", "uint": "u", "complex": "c"}
PYTHON_SCALARS = (bool, int, float, complex)


def unwrap(leaf: Any) -> Any:
    """The array an nnx Variable holds (flax before 0.11 makes Variables leaves), else `leaf`."""
    return variable_value(leaf) if is_nnx_variable_type(type(leaf)) else leaf


def unwrap_all(leaves: list[Any]) -> list[Any]:
    """`unwrap` of each leaf; the list itself where no leaf is an nnx Variable (flax 0.11 and
    later never makes one a leaf)."""
    if not any(map(is_nnx_variable_type, set(map(type, leaves)))):
        return leaves
    return list(map(unwrap, leaves))


def is_variable(node: Any) -> bool:
    """Whether `node` is an nnx Variable."""
    return is_nnx_variable_type(type(node))


def is_restored_variable(node: Any) -> bool:
    """An nnx Variable as orbax restores `nnx.state(...)` without a target: `{"value": leaf}`
    (`{"value": None}` for a masked parameter)."""
    if type(node) is not dict or len(node) != 1 or RESTORED_VARIABLE_KEY not in node:
        return False
    value = node[RESTORED_VARIABLE_KEY]
    return value is None or jax.tree_util.all_leaves([value])


def is_any_variable(node: Any) -> bool:
    """An nnx Variable, typed or restored (`is_restored_variable`)."""
    return is_variable(node) or is_restored_variable(node)


def value_of(node: Any) -> Any:
    """The value an nnx Variable holds, typed or restored (`is_restored_variable`), else `node`.

    >>> value_of({"value": 1}), value_of({"value": {"w": 1}})
    (1, {'value': {'w': 1}})
    """
    if is_restored_variable(node):
        return node[RESTORED_VARIABLE_KEY]
    return unwrap(node)


def without_variables(node: Any, restored: bool) -> Any:
    """`node` with every nnx Variable in it replaced by its value (with `restored`, every
    `{"value": leaf}` too, as in a tree restored without its target): what `get` and `find` return.

    >>> without_variables({"count": {"value": 3}, "mu": {"w": {"value": 1.0}}}, restored=True)
    {'count': 3, 'mu': {'w': 1.0}}
    """

    is_variable_node = is_any_variable if restored else is_variable
    if is_variable_node(node):
        return value_of(node)
    return jax.tree.map(value_of, node, is_leaf=is_variable_node)


def is_concrete_array_type(kind: type) -> bool:
    """A `jax.Array` type that holds data (not a tracer)."""
    return issubclass(kind, jax.Array) and not issubclass(kind, jax.core.Tracer)


def is_deleted(leaf: Any) -> bool:
    """A concrete `jax.Array` whose buffers were deleted (donated to a jitted step)."""
    return isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted()


def is_abstract(leaf: Any) -> bool:
    """A tracer or a `jax.ShapeDtypeStruct`: a shape and dtype without values here."""
    return isinstance(leaf, jax.core.Tracer | jax.ShapeDtypeStruct)


def is_concrete(leaf: Any) -> bool:
    """An array with values here: a `jax.Array` (not a tracer), a NumPy array or scalar."""
    return not is_abstract(leaf) and isinstance(leaf, jax.Array | np.ndarray | np.generic)


def is_placed(leaf: Any) -> bool:
    """A leaf with a sharding: a concrete `jax.Array`, or a `ShapeDtypeStruct` that carries one
    (a `PartitionSpec` without its mesh, which JAX cannot read here, is none)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return sharding_of(leaf) is not None
    return isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)


def sharding_of(leaf: Any) -> Any:
    """A leaf's `jax.sharding.Sharding`, or None: none, not readable here (a `PartitionSpec`
    given to a `ShapeDtypeStruct` outside its mesh's context), or not a sharding."""
    try:
        sharding = getattr(leaf, "sharding", None)
    except Exception:  # JAX raises TypeError or ValueError for a spec without its mesh
        return None
    return sharding if isinstance(sharding, jax.sharding.Sharding) else None


def aval(leaf: Any) -> Any:
    """JAX's abstract value of `leaf` (a `ShapeDtypeStruct` is its own), or None for a non-JAX type."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    try:
        return jax.typeof(leaf)
    except Exception:  # not a JAX type
        return None


def is_weak(leaf: Any) -> bool:
    """Whether `leaf` is weakly typed (a NumPy array never is)."""
    if isinstance(leaf, np.ndarray | np.generic):
        return False
    return bool(getattr(aval(leaf), "weak_type", False))


def dtype_and_weak(leaf: Any) -> tuple[Any, bool] | None:
    """A leaf's dtype with its weak type (a weak f32 is not an f32), or None if not an array."""
    dtype = getattr(leaf, "dtype", None)
    return None if dtype is None else (dtype, is_weak(leaf))


@functools.cache
def is_numeric_dtype(dtype: Any) -> bool:
    """A number or bool dtype (not a PRNG key, a string, an object, a date or a duration: NumPy
    counts `timedelta64` as an integer, whose NaT would read as its smallest value)."""
    return value_kind(dtype) == "number"


def at_least_float32(dtype: Any) -> np.dtype:
    """The dtype a float or complex array is summed and compared in: its own from 32 bits up, else
    float32 (JAX promotes float8 to float32 only when asked: `jnp.promote_types` refuses).

    >>> at_least_float32(jnp.bfloat16), at_least_float32(jnp.float8_e4m3fn), at_least_float32(jnp.complex64)
    (dtype('float32'), dtype('float32'), dtype('complex64'))
    """
    dtype = np.dtype(dtype)
    return dtype if dtype.itemsize >= 4 else np.dtype(np.float32)


def host_number(leaf: Any) -> np.ndarray | None:
    """A host leaf as a NumPy array, or None for a Python int beyond float64's range."""
    array = np.asarray(leaf)
    if array.dtype != object:
        return array
    try:  # a Python int beyond 64 bits
        return np.asarray(float(leaf))
    except OverflowError:
        return None


def is_numeric(leaf: Any) -> bool:
    """A leaf with numbers to summarise: a numeric or bool array or scalar, concrete or traced,
    not deleted."""
    leaf = unwrap(leaf)
    if isinstance(leaf, jax.ShapeDtypeStruct) or leaf is None or isinstance(leaf, str | bytes):
        return False
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return isinstance(leaf, PYTHON_SCALARS) and host_number(leaf) is not None
    return not is_deleted(leaf) and is_numeric_dtype(dtype)


def value_kind(dtype: Any) -> str:
    """ "key" for PRNG keys, "number" for numbers and bools, else NumPy's kind letter."""
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return "key"
    kind = np.dtype(dtype).kind
    if kind not in "mM" and (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        return "number"
    return kind


# Text ------------------------------------------------------------------------------------------


def dtype_name(dtype: Any) -> str:
    """The short name of a dtype: `f32`, `bf16`, `u8`, `c64`, `bool`."""
    name = str(dtype)
    if name == "bool":
        return "bool"
    for long, short in _DTYPE_NAMES.items():
        if name.startswith(long) and name[len(long) :].isdigit():
            return short + name[len(long) :]
    return name


def bytes_text(count: int) -> str:
    """`12 B`, `1.5 KB`, `1000 KB`, `3.2 GB`, `1.2 PB`: three significant digits, never an exponent.

    >>> bytes_text(512), bytes_text(1_024_000), bytes_text(5 * 2**50)
    ('512 B', '1000 KB', '5 PB')
    """
    value, units = float(count), ["B", "KB", "MB", "GB", "TB", "PB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    unit = units[0]
    if unit == "B" or value >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.3g} {unit}"


class LeafSummary(NamedTuple):
    """A leaf as a row shows it (`weak_f32[] = 0.9 @ replicated(8)`, `int = 3`, `None`): its
    Python type's name, and for an array its short dtype name, shape, weak type, value (a
    concrete scalar's; a Python number's too), sharding text (`@ P('data',)`, or `""`), whether
    it was deleted (donated), and the type of the nnx Variable that holds it, if any."""

    type: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    weak: bool = False
    value: str | None = None
    sharding: str = ""
    deleted: bool = False
    variable: str = ""


def leaf_summary(leaf: Any) -> LeafSummary:
    """What a row shows of `leaf` (the parts of `_leaf.short_text`), reading no array data but a
    concrete scalar's value."""
    if is_variable(leaf):  # flax before 0.11: a Variable is a leaf to JAX
        return leaf_summary(unwrap(leaf))._replace(variable=type(leaf).__name__)
    name = type(leaf).__name__
    if type(leaf) in PYTHON_SCALARS:
        return LeafSummary(name, value=f"{leaf}")
    dtype, shape = getattr(leaf, "dtype", None), getattr(leaf, "shape", None)
    if leaf is None or dtype is None or shape is None:
        return LeafSummary(name)
    if is_deleted(leaf):
        return LeafSummary(name, dtype_name(dtype), tuple(shape), deleted=True)
    weak = bool(getattr(aval(leaf), "weak_type", False))
    return LeafSummary(name, dtype_name(dtype), tuple(shape), weak, scalar_text(leaf), sharding_text(leaf))


def leaf_text(leaf: LeafSummary) -> str:
    """A leaf in a few characters: `weak_f32[] = 0.9`, `f32[4,4] @ P('data',)`, `int = 3`."""
    if leaf.variable:
        return f"{leaf.variable} {leaf_text(leaf._replace(variable=''))}"
    if leaf.dtype is None or leaf.shape is None:
        if leaf.value is not None:
            return bounded(f"{leaf.type} = {leaf.value}", 60)
        return "None" if leaf.type == "NoneType" else bounded(leaf.type, 60)
    shape = f"{leaf.dtype}[{','.join(map(str, leaf.shape))}]"
    if leaf.deleted:
        return f"{shape} (deleted)"
    text = ("weak_" if leaf.weak else "") + shape
    if leaf.value is not None:
        text += f" = {leaf.value}"
    return f"{text} {leaf.sharding}" if leaf.sharding else text


def short_text(leaf: Any) -> str:
    """A leaf in a few characters, as `describe` shows it: `weak_f32[] = 0.9`, `f32[4,4] @ P('data',)`."""
    return leaf_text(leaf_summary(leaf))


def scalar_text(leaf: Any) -> str | None:
    """The value of a concrete 0-d number, read from this process's own copy only."""
    if getattr(leaf, "ndim", None) != 0 or is_abstract(leaf) or is_deleted(leaf):
        return None
    if not jnp.issubdtype(leaf.dtype, jnp.number) and leaf.dtype != np.bool_:
        return None
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if not (leaf.is_fully_replicated and leaf.addressable_shards):
            return None
        leaf = leaf.addressable_data(0)
    value = np.asarray(leaf).item()
    return shortest(value, leaf.dtype) if isinstance(value, float) else str(value)


def scalar_number(leaf: Any) -> float | None:
    """The value of a concrete 0-d number as a float, or None."""
    text = scalar_text(leaf)
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def shortest(value: float, dtype: Any) -> str:
    """The value at the precision of its dtype, short: the fewest significant digits (at most the
    dtype's decimal precision) that give it back in `dtype`, so a bf16 0.9 is `0.9`, not the
    `0.898438` of its float64 expansion; past that precision, it is cut there."""
    precision = jnp.finfo(dtype).precision if jnp.issubdtype(dtype, jnp.floating) else 15
    for digits in range(1, precision + 1):
        text = f"{value:.{digits}g}"
        with np.errstate(over="ignore"):  # a rounded text can lie beyond the dtype's range
            if np.asarray(float(text), dtype=dtype) == np.asarray(value, dtype=dtype):
                return text
    return f"{value:.{precision}g}"


def sharding_text(leaf: Any) -> str:
    """`@ P('data',)` or `@ replicated(8)` for a leaf on several devices, `""` otherwise."""
    sharding = None if isinstance(leaf, jax.core.Tracer) else sharding_of(leaf)
    if sharding is None:
        return ""
    if sharding.num_devices <= 1:  # an AbstractMesh's sharding has no device_set
        return ""
    spec = getattr(sharding, "spec", None)
    if spec is not None and any(axis is not None for axis in spec):
        return f"@ {partition_spec_text(spec)}"
    return f"@ replicated({sharding.num_devices})"


def sharding_text_if_placed(leaf: Any) -> str | None:
    """The placement text of a placed leaf (`""` on one device), or None where it has none."""
    return sharding_text(leaf) if is_placed(leaf) else None
