"""Value statistics of a tree's leaves (README: What is wrong here).

Each numeric leaf gets a row of counts (NaN, Inf, finite elements, zeros) and a row of sums: the
minimum and maximum of its finite elements, a divisor `scale` (their largest magnitude on the
host, a power of two near it on a device), and the sum and the sum of squares of the finite
elements divided by `scale`, so that neither overflows whatever the values. Rows combine
(`_merge`); a leaf without values has a neutral row.

Where the numbers are computed:

- NumPy and Python leaves, and arrays of fewer than `_LARGE` elements that this process holds
  whole: on the host, in float64 (a wider dtype in its own), the arrays fetched in one
  `jax.device_get` and reduced by a few vectorised NumPy calls per dtype. Nothing is compiled, so
  the number of compilations does not grow with the number of distinct shapes. Except: `_STACKED`
  or more small float arrays of one shape, dtype and device (the layers of a moment) are stacked
  and reduced on that device, a chunk at a time, and only their rows come back.
- Larger arrays, and arrays this process does not hold whole: on their devices, one compiled
  function per shape, dtype and placement; XLA reduces each shard and combines the partial
  results, never gathering the array.
- Under `jit`: in the trace (small leaves of one shape and dtype stacked), in JAX's default float
  and int dtypes.

>>> table = leaf_table([jnp.array([1.0, jnp.nan, 3.0])])
>>> int(summarise(table, [0])["nan"]), float(summarise(table, [0])["max"])
(1, 3.0)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._compat import is_nnx_variable_type, variable_value

_LARGE = 1 << 16
"""Arrays with at least this many elements are reduced where they live."""
_CHUNK = 256
_STACKED = 64
"""Small float arrays of one shape, dtype and device, this many or more, are reduced on it
together: fewer transfers than one a leaf, and at most one compilation per `_STACKED` leaves."""
_COUNTED = (1 << 31) - 1
"""At most this many elements are reduced on a device at once (its counts are int32)."""
_BATCH = 1 << 22
"""At most this many elements are concatenated for one vectorised host reduction."""
COUNTS = ("nan", "inf", "finite", "zeros")
SUMS = ("min", "max", "scale", "sum", "sumsq")
_NEUTRAL = (np.inf, -np.inf, 0.0, 0.0, 0.0)
STAT_KEYS = ("nan", "inf", "min", "max", "mean", "rms", "zero_fraction")
"""The keys of each statistics dict: counts of NaN and Inf, then over the finite elements."""


@dataclass(frozen=True)
class LeafTable:
    """Per-leaf statistics: `counts[i]` (`COUNTS`) and `sums[i]` (`SUMS`) of leaf `i`; `numeric[i]`
    False for a leaf without values (a PRNG key, a string, an abstract or deleted array), whose
    row is neutral. NumPy int64 and float64 eagerly, tracers under `jit`."""

    counts: Any
    sums: Any
    numeric: np.ndarray


def _value(leaf: Any) -> Any:
    return variable_value(leaf) if is_nnx_variable_type(type(leaf)) else leaf


def _host(leaf: Any) -> np.ndarray | None:
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
    leaf = _value(leaf)
    if isinstance(leaf, jax.ShapeDtypeStruct) or leaf is None or isinstance(leaf, str | bytes):
        return False
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return isinstance(leaf, bool | int | float | complex) and _host(leaf) is not None
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted():
        return False
    return _numeric_dtype(dtype)


@functools.cache
def _numeric_dtype(dtype: Any) -> bool:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return False
    return bool(jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_))


def _host_rows(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of non-empty host arrays of one dtype, by segment reductions of their
    concatenation."""
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if len(arrays) > 1 else arrays[0].reshape(-1)
    with np.errstate(all="ignore"):
        if np.iscomplexobj(flat):  # the magnitude in float64 at least
            flat = np.abs(flat.astype(np.result_type(flat.dtype, np.complex128)))
        if flat.dtype == np.bool_:
            flat = flat.astype(np.uint8)
        wide_type = flat.dtype if flat.dtype.kind == "f" and flat.dtype.itemsize > 8 else np.float64
        wide = flat.astype(wide_type)
        nan, finite = np.isnan(wide), np.isfinite(wide)

        def count(mask: np.ndarray) -> np.ndarray:
            return np.add.reduceat(mask, starts, dtype=np.int64)

        counts = np.stack([count(nan), count(~(nan | finite)), count(finite), count(wide == 0)], axis=1)
        if flat.dtype.kind in "iu":  # exact in the leaf's own dtype
            low = np.minimum.reduceat(flat, starts).astype(np.float64)
            high = np.maximum.reduceat(flat, starts).astype(np.float64)
        else:
            low = np.minimum.reduceat(np.where(finite, wide, np.inf), starts)
            high = np.maximum.reduceat(np.where(finite, wide, -np.inf), starts)
        scale = np.maximum.reduceat(np.where(finite, np.abs(wide), 0), starts)
        scaled = np.where(finite, wide / np.repeat(np.where(scale > 0, scale, 1), sizes), 0)
        sums = np.stack(
            [low, high, scale, np.add.reduceat(scaled, starts), np.add.reduceat(scaled * scaled, starts)],
            axis=1,
        )
    return counts, sums.astype(np.float64)


def _device_rows(x: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    """Counts and sums (`COUNTS`, `SUMS`) of `x` over `axes`, in JAX, but for the scale column: its
    binary exponent `e`, the sums being of the elements times `2**(2 - e)` (below 4 in
    magnitude; a power of two never subnormal, which a device would flush to zero). A complex
    array's min and max are of half its magnitudes (see `_with_scale`): |3e38 + 3e38j| is finite
    but beyond float32."""
    halved = jnp.iscomplexobj(x)
    if halved:  # |inf + nan j| is inf, as in C and NumPy; halving is exact but for subnormals
        x = jnp.where(jnp.isinf(x.real) | jnp.isinf(x.imag), jnp.inf, jnp.abs(x * 0.5))
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32) if floating else jnp.float32)
    nan, finite = jnp.isnan(wide), jnp.isfinite(wide)
    integer = jax.dtypes.canonicalize_dtype(np.int64)

    def count(mask: Any) -> Any:
        return mask.sum(axes, dtype=integer)

    counts = jnp.stack([count(nan), count(~(nan | finite)), count(finite), count(wide == 0)], axis=-1)
    if floating:
        low = jnp.where(finite, wide, jnp.inf).min(axes)
        high = jnp.where(finite, wide, -jnp.inf).max(axes)
    else:
        low, high = x.min(axes).astype(wide.dtype), x.max(axes).astype(wide.dtype)
    exponent = jnp.frexp(jnp.where(finite, jnp.abs(wide), 0).max(axes))[1]
    factor = jnp.ldexp(jnp.ones((), wide.dtype), jnp.expand_dims(2 - exponent, axes))
    scaled = jnp.where(finite, wide * factor, 0)
    exponent = exponent + 1 if halved else exponent  # the sums are of the whole magnitudes' scale
    columns = [low, high, exponent.astype(wide.dtype), scaled.sum(axes), (scaled * scaled).sum(axes)]
    return counts, jnp.stack(columns, axis=-1)


def _with_scale(xp: Any, sums: Any, halved: bool = False) -> Any:
    """Device rows with their scale column: the exponent `e` made the divisor `2**(e - 2)`; the
    min and max of a complex array (`halved`) doubled."""
    divisor = xp.ldexp(xp.ones((), sums.dtype), sums[..., 2].astype(xp.int32) - 2)
    extremes = sums[..., :2] * 2 if halved else sums[..., :2]
    return xp.concatenate([extremes, divisor[..., None], sums[..., 3:]], axis=-1)


def _finite_rows(x: Any) -> tuple[Any, Any]:
    """`_device_rows` of a float array all of whose elements are finite, in fewer passes: no masks,
    and its largest magnitude from its min and max."""
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    integer = jax.dtypes.canonicalize_dtype(np.int64)
    zero = jnp.zeros((), integer)
    counts = jnp.stack([zero, zero, jnp.asarray(x.size, integer), (wide == 0).sum(dtype=integer)])
    low, high = wide.min(), wide.max()
    exponent = jnp.frexp(jnp.maximum(-low, high))[1]
    scaled = wide * jnp.ldexp(jnp.ones((), wide.dtype), 2 - exponent)
    columns = [low, high, exponent.astype(wide.dtype), scaled.sum(), (scaled * scaled).sum()]
    return counts, jnp.stack(columns)


@jax.jit
def _reduce_one(leaf: Any) -> tuple[Any, Any, Any]:
    """One array's counts and sums, where it lives; an integer array's min and max also in its own
    dtype (exact). A float array whose sum is finite (no NaN, no Inf: the usual case) takes the
    unmasked reductions of `_finite_rows`; `lax.cond` runs one branch."""
    axes = tuple(range(leaf.ndim))
    if jnp.issubdtype(leaf.dtype, jnp.floating):
        total = leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32)).sum()
        counts, sums = jax.lax.cond(jnp.isfinite(total), _finite_rows, lambda x: _device_rows(x, axes), leaf)
    else:
        counts, sums = _device_rows(leaf, axes)
    integer = not (jnp.issubdtype(leaf.dtype, jnp.inexact))
    extremes = jnp.stack([leaf.min(), leaf.max()]) if integer and leaf.dtype != jnp.bool_ else None
    return counts, sums, extremes


def leaf_table(leaves: Sequence[Any]) -> LeafTable:
    """The statistics of every leaf (see `LeafTable`)."""
    values = [_value(leaf) for leaf in leaves]
    numeric = np.fromiter(map(is_numeric, values), dtype=bool, count=len(values))
    host: list[tuple[int, Any]] = []
    fetched: list[tuple[int, jax.Array]] = []
    alone: list[int] = []
    traced: dict[tuple[Any, ...], list[int]] = {}
    fetched_groups: dict[tuple[Any, ...], list[int]] = {}
    stacked: list[tuple[list[int], Any]] = []
    everything_here = jax.process_count() == 1
    for position in np.flatnonzero(numeric).tolist():
        value = values[position]
        if isinstance(value, jax.core.Tracer):
            if value.size:
                key = (value.shape, value.dtype, position if value.size >= _LARGE else None)
                traced.setdefault(key, []).append(position)
        elif isinstance(value, jax.Array):
            size = value.size
            if 0 < size < _LARGE and (everything_here or value.is_fully_addressable):
                fetched_groups.setdefault((value.shape, value.dtype, value.sharding), []).append(position)
            elif size:
                alone.append(position)
        else:
            array = _host(value)
            if array is not None and array.size:
                host.append((position, array))
    for (_, dtype, sharding), members in fetched_groups.items():
        if len(members) >= _STACKED and jnp.issubdtype(dtype, jnp.floating) and len(sharding.device_set) == 1:
            stacked.extend(_stacked_rows([values[p] for p in members], members))
        else:
            fetched.extend((p, values[p]) for p in members)
    host.extend(zip((p for p, _ in fetched), jax.device_get([v for _, v in fetched]), strict=True))
    counts = np.zeros((len(values), len(COUNTS)), np.int64)
    sums = np.tile(np.asarray(_NEUTRAL), (len(values), 1))
    for chunk, (chunk_counts, chunk_sums) in zip(
        (c for c, _ in stacked), jax.device_get([rows for _, rows in stacked]), strict=True
    ):
        counts[chunk] = np.asarray(chunk_counts[: len(chunk)], np.int64)
        sums[chunk] = _with_scale(np, np.asarray(chunk_sums[: len(chunk)], np.float64))
    _fill_from_host(host, counts, sums)
    _fill_alone([(p, values[p]) for p in alone], counts, sums)
    if not traced:
        return LeafTable(counts, sums, numeric)
    return _with_traced(values, traced, counts, sums, numeric)


@jax.jit
def _reduce_stack(*leaves: Any) -> tuple[Any, Any]:
    return _device_rows(jnp.stack(leaves), tuple(range(1, leaves[0].ndim + 1)))


def _stacked_rows(arrays: list[jax.Array], positions: list[int]) -> list[tuple[list[int], Any]]:
    """The rows of many small float arrays of one shape, dtype and device, stacked and reduced on
    it by chunks of `_CHUNK` (the last padded to a power of two, at least `_STACKED`): one
    compilation per shape serves at least `_STACKED` leaves, and the results are a few arrays."""
    pieces = []
    for start in range(0, len(arrays), _CHUNK):
        chunk = arrays[start : start + _CHUNK]
        size = min(_CHUNK, max(_STACKED, 1 << (len(chunk) - 1).bit_length()))
        padded = chunk + [chunk[0]] * (size - len(chunk))
        pieces.append((positions[start : start + len(chunk)], _reduce_stack(*padded)))
    return pieces


def _fill_from_host(host: list[tuple[int, np.ndarray]], counts: np.ndarray, sums: np.ndarray) -> None:
    """The rows of host arrays, reduced a dtype at a time in batches of about `_BATCH` elements."""
    by_dtype: dict[Any, list[tuple[int, np.ndarray]]] = {}
    for position, array in host:
        by_dtype.setdefault(array.dtype, []).append((position, array))
    batches: list[list[tuple[int, np.ndarray]]] = []
    for members in by_dtype.values():
        size = _BATCH
        for member in members:
            if size + member[1].size > _BATCH:
                batches.append([])
                size = 0
            batches[-1].append(member)
            size += member[1].size
    for batch in batches:
        index = [position for position, _ in batch]
        counts[index], sums[index] = _host_rows([array for _, array in batch])


def _fill_alone(arrays: list[tuple[int, jax.Array]], counts: np.ndarray, sums: np.ndarray) -> None:
    """The rows of arrays reduced where they live, piece by piece (`_pieces`), in one transfer."""
    pieces = [(position, piece) for position, array in arrays for piece in _pieces(array)]
    with jax.ensure_compile_time_eval():  # concrete arrays closed over by a traced function too
        results = jax.device_get([_reduce_one(piece) for _, piece in pieces])
    rows: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for (position, piece), (piece_counts, piece_sums, extremes) in zip(pieces, results, strict=True):
        piece_sums = _with_scale(np, np.asarray(piece_sums, np.float64), jnp.iscomplexobj(piece))
        if extremes is not None:  # an integer array's, exact
            piece_sums[:2] = np.asarray(extremes).astype(np.float64)
        rows.setdefault(position, []).append((np.asarray(piece_counts, np.int64), piece_sums))
    for position, parts in rows.items():
        merged = _merge(np, np.stack([c for c, _ in parts]), np.stack([s for _, s in parts]))
        counts[position], sums[position] = merged[:4], merged[4:]


def _pieces(array: jax.Array) -> list[jax.Array]:
    """`array`, or slices along its first axis of at most `_COUNTED` elements each: a device
    counts in int32."""
    if array.size <= _COUNTED or array.ndim == 0:
        return [array]
    step = max(1, _COUNTED // (array.size // array.shape[0]))
    return [array[start : start + step] for start in range(0, array.shape[0], step)]


def _merge(xp: Any, counts: Any, sums: Any) -> list[Any]:
    """The counts and sums of several rows together: counts add, extremes combine, and each sum
    is rescaled from its row's scale to the largest."""
    scale = sums[:, 2].max(initial=0.0)
    ratio = sums[:, 2] / xp.where(scale > 0, scale, 1)
    return [
        *(counts[:, k].sum() for k in range(len(COUNTS))),
        sums[:, 0].min(initial=np.inf),
        sums[:, 1].max(initial=-np.inf),
        scale,
        (sums[:, 3] * ratio).sum(),
        (sums[:, 4] * ratio * ratio).sum(),
    ]


def _with_traced(
    values: list[Any], traced: dict[tuple[Any, ...], list[int]], counts: Any, sums: Any, numeric: np.ndarray
) -> LeafTable:
    """The table under `jit`: the host rows, then the traced leaves' rows, reduced in the trace."""
    integer, floating = jax.dtypes.canonicalize_dtype(np.int64), jax.dtypes.canonicalize_dtype(np.float64)
    positions: list[int] = []
    parts: list[tuple[Any, Any]] = []
    for (shape, dtype, _), members in traced.items():
        for start in range(0, len(members), _CHUNK):
            chunk = members[start : start + _CHUNK]
            stack = jnp.stack([values[p] for p in chunk])
            rows_counts, rows_sums = _device_rows(stack, tuple(range(1, len(shape) + 1)))
            parts.append(
                (rows_counts, _with_scale(jnp, rows_sums, jnp.issubdtype(dtype, jnp.complexfloating)))
            )
            positions.extend(chunk)
    index = np.asarray(positions)
    all_counts = jnp.concatenate([c.astype(integer) for c, _ in parts])
    all_sums = jnp.concatenate([s.astype(floating) for _, s in parts])
    with np.errstate(over="ignore"):  # a host value beyond float32 (without x64) reads as inf
        host_sums = np.asarray(sums).astype(floating)
    table_counts = jnp.asarray(counts, integer).at[index].set(all_counts)
    table_sums = jnp.asarray(host_sums).at[index].set(all_sums)
    return LeafTable(table_counts, table_sums, numeric)


def summarise(table: LeafTable, leaves: Sequence[int] | slice) -> dict[str, Any]:
    """The statistics of the leaves `leaves` together, as `STAT_KEYS`: NaN and Inf counts, then the
    min, max, mean, RMS and fraction of zeros of their finite elements (NaN where none is)."""
    eager = isinstance(table.counts, np.ndarray)
    xp: Any = np if eager else jnp
    chosen = leaves if isinstance(leaves, slice) else np.asarray(leaves, dtype=np.int64)
    counts, sums = table.counts[chosen], table.sums[chosen]
    nan, inf, finite, zeros, low, high, scale, total, squares = _merge(xp, counts, sums)
    nothing = finite == 0
    denominator = xp.maximum(finite, 1).astype(sums.dtype)
    result = {
        "nan": nan,
        "inf": inf,
        "min": xp.where(nothing, np.nan, low),
        "max": xp.where(nothing, np.nan, high),
        "mean": xp.where(nothing, np.nan, total / denominator * scale),
        "rms": xp.where(nothing, np.nan, xp.sqrt(squares / denominator) * scale),
        "zero_fraction": xp.where(nothing, np.nan, zeros / denominator),
    }
    return {
        key: xp.asarray(value, counts.dtype if key in ("nan", "inf") else sums.dtype)[()]
        for key, value in result.items()
    }
