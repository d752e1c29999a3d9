"""Value statistics of a tree's leaves (docs/health.md).

Each numeric leaf gets a row of counts (NaN, Inf, finite elements, zeros) and a row of sums: the
minimum and maximum of its finite elements, a divisor `scale` (their largest magnitude on the
host, a power of two near it on a device), and the sum and the sum of squares of the finite
elements divided by `scale`, so that neither overflows whatever the values. Rows combine
(`_merge`); a leaf without values has a neutral row.

The rows are computed on the device engine (`_engine`), which places each leaf:

- NumPy and Python leaves, and small arrays this process holds whole: on the host, in float64 (a
  longdouble too), by a few vectorised NumPy calls per dtype (`_host_rows`). Nothing is
  compiled. Except: many small float arrays of one shape, dtype and device (the layers of a
  moment) are stacked and reduced on that device (`_reduce_stack`), and only their rows come back.
- Larger arrays, and arrays this process does not hold whole: on their devices, one compiled
  function per shape, dtype and placement (`_reduce_one`), in slices of at most `_COUNTED`
  elements; XLA reduces each shard and combines the partial results, never gathering the array.
- Under `jit`: in the trace (leaves of one shape and dtype stacked), in JAX's default float and
  int dtypes.

>>> table = leaf_table([jnp.array([1.0, jnp.nan, 3.0])])
>>> int(summarise(table, [0])["nan"]), float(summarise(table, [0])["max"])
(1, 3.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Shaped

from ._engine import Kernel, combined, every_process, run, split
from ._leaf import at_least_float32, host_number, is_numeric, unwrap

_COUNTED = (1 << 31) - 1
"""At most this many elements are reduced on a device at once (its counts are int32)."""
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


def _host_rows(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of non-empty host arrays of one dtype, by segment reductions of their
    concatenation."""
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if len(arrays) > 1 else arrays[0].reshape(-1)
    with np.errstate(all="ignore"):
        if np.iscomplexobj(flat):  # the magnitude, in float64
            flat = np.abs(flat.astype(np.complex128))
        if flat.dtype == np.bool_:
            flat = flat.astype(np.uint8)
        wide = flat.astype(np.float64)  # a longdouble too (docs/health.md): beyond float64, Inf
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


def _device_rows(
    x: Shaped[Array, "*shape"], axes: tuple[int, ...]
) -> tuple[Int[Array, "*rows counts=4"], Float[Array, "*rows sums=5"]]:
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
    wide = x.astype(at_least_float32(x.dtype) if floating else jax.dtypes.canonicalize_dtype(np.float64))
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
    # at least minexp + 2, so that the divisor `2**(e - 2)` is no subnormal, which a device flushes
    exponent = jnp.maximum(exponent, jnp.finfo(wide.dtype).minexp + 2)
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


_EXACT_ONES = 1 << 24
"""A float32 sum of this many ones or fewer is exact, in any order."""


def _zero_count(x: Float[Array, "*shape"], arithmetic: bool) -> tuple[Int[Array, ""], Bool[Array, ""]]:
    """The number of zeros of the finite float array `x`, and whether it is exact. With
    `arithmetic`, by float arithmetic alone (XLA on a CPU reduces integers and selects about ten
    times slower, and the sums of slices of an array): a float sum of `1 - min(ceil(|x|), 1)`,
    exact where it is below `_EXACT_ONES` (every partial sum is then an integer it holds). No
    product by a large constant: XLA folds two into one, which overflows."""
    integer = jax.dtypes.canonicalize_dtype(np.int64)
    if not arithmetic:
        return (x == 0).sum(dtype=integer), jnp.asarray(True)
    wide = at_least_float32(x.dtype)
    zeros = (1 - jnp.minimum(jnp.ceil(jnp.abs(x)), 1)).sum(dtype=wide)
    return zeros.astype(integer), (zeros < _EXACT_ONES) | (jnp.dtype(wide).itemsize == 8)


def _finite_rows(
    x: Float[Array, "*shape"], arithmetic: bool = False
) -> tuple[Int[Array, "counts=4"], Float[Array, "sums=5"], Int[Array, ""]]:
    """`_device_rows` of a float array all of whose elements are finite (the usual case), by
    independent reductions of the whole array: its min and max (in its own dtype, exact), its sum
    and sum of squares (at least float32), which XLA fuses into one read of the data on a GPU and
    runs each at about the speed of one on a CPU, and its zeros (`_zero_count`).
    The sums are taken unscaled, then scaled by a power of two, which is exact where the sum of
    squares neither overflowed nor lost its smallest terms (a largest magnitude below
    `2**(minexp / 4)`). Also whether the rows are right: `_RIGHT`, or `_AGAIN` where an element is
    NaN or Inf (XLA's min and max on a CPU may skip a NaN; the sum does not), the scaling was not
    exact, or the zeros were not counted exactly: then the caller reduces the array again with
    `_device_rows`. No conditional on the
    device: a GPU would wait for the host to read its predicate."""
    wide = at_least_float32(x.dtype)
    integer = jax.dtypes.canonicalize_dtype(np.int64)
    low, high = x.min().astype(wide), x.max().astype(wide)
    # each widened apart: a float32 copy of x that two reductions share is materialised (on a CPU)
    for_squares, for_zeros = jax.lax.optimization_barrier((x, x))
    total, squares = x.sum(dtype=wide), jnp.square(for_squares.astype(wide)).sum()
    if arithmetic:  # read as the zero count reads them: a CPU flushes subnormals, but not in min
        tiny = jnp.finfo(wide).tiny
        low, high = (jnp.where(jnp.abs(e) < tiny, jnp.zeros((), wide), e) for e in (low, high))
    largest = jnp.maximum(jnp.maximum(-low, high), 0)
    finite = jnp.isfinite(total) & jnp.isfinite(low) & jnp.isfinite(high)
    exact = jnp.isfinite(squares) & ((largest == 0) | (largest >= 2.0 ** (jnp.finfo(wide).minexp // 4)))
    exponent = jnp.frexp(largest)[1]
    factor = jnp.ldexp(jnp.ones((), wide), 2 - exponent)
    zero, size = jnp.zeros((), integer), jnp.asarray(x.size, integer)
    zeros, counted = _zero_count(for_zeros, arithmetic)
    nothing_else = (low == 0) & (high == 0)  # all zeros: counted or not
    counts = jnp.stack([zero, zero, size, jnp.where(nothing_else, size, zeros)])
    sums = jnp.stack([low, high, exponent.astype(wide), total * factor, squares * factor * factor])
    return counts, sums, jnp.where(finite & exact & (counted | nothing_else), _RIGHT, _AGAIN)


_RIGHT, _AGAIN = 0, 1
"""Whether `_finite_rows` are right, or the array is to be reduced again with masks."""


@partial(jax.jit, static_argnums=1)
def _reduce_one(
    leaf: Shaped[Array, "*shape"], arithmetic: bool = False
) -> tuple[Int[Array, "counts=4"], Float[Array, "sums=5"], Shaped[Array, "min_max=2"] | None, Int[Array, ""]]:
    """One array's counts and sums, where it lives (`_finite_rows` for floats, `arithmetic` on a
    CPU), and whether they are right (`_RIGHT`) or the array is to be reduced again
    (`_reduce_masked`); an integer array's min and max also in its own dtype (exact)."""
    if jnp.issubdtype(leaf.dtype, jnp.floating):
        counts, sums, verdict = _finite_rows(leaf, arithmetic)
    else:
        counts, sums = _device_rows(leaf, tuple(range(leaf.ndim)))
        verdict = jnp.asarray(_RIGHT)
    integer = not (jnp.issubdtype(leaf.dtype, jnp.inexact))
    extremes = jnp.stack([leaf.min(), leaf.max()]) if integer and leaf.dtype != jnp.bool_ else None
    return counts, sums, extremes, verdict


@partial(jax.jit, static_argnums=1)
def _reduce_many(
    leaves: tuple[Shaped[Array, "*shape"], ...], arithmetic: bool
) -> tuple[Int[Array, "leaves counts=4"], Float[Array, "leaves sums=5"], Any, Int[Array, " leaves"]]:
    """`_reduce_one` of several arrays of one shape, dtype and placement, its results stacked: one
    dispatch and one transfer for them all."""
    rows = [_reduce_one(leaf, arithmetic) for leaf in leaves]
    return tuple(None if column[0] is None else jnp.stack(column) for column in zip(*rows, strict=True))  # type: ignore[return-value]


@jax.jit
def _reduce_masked(
    leaf: Float[Array, "*shape"],
) -> tuple[Int[Array, "counts=4"], Float[Array, "sums=5"], None, Int[Array, ""]]:
    """`_reduce_one`'s results for a float array with a NaN or an Inf, or values whose squares
    overflow or underflow: by the masked reductions of `_device_rows`, in a branch of a
    conditional (both branches alike), as the kernel before computed them: JAX 0.6's XLA sums a
    16-bit float array's squares less accurately in the program's body (an RMS 3e-6 off)."""

    def rows(x: Any) -> tuple[Any, Any]:
        return _device_rows(x, tuple(range(x.ndim)))

    counts, sums = jax.lax.cond(jnp.isfinite(leaf.sum()), rows, rows, leaf)
    return counts, sums, None, jnp.asarray(_RIGHT)


@jax.jit
def _reduce_stack(
    *leaves: Shaped[Array, "*shape"],
) -> tuple[Int[Array, "leaves counts=4"], Float[Array, "leaves sums=5"]]:
    """The rows of leaves of one shape and dtype, stacked: `_device_rows` over all but the first
    axis."""
    return _device_rows(jnp.stack(leaves), tuple(range(1, leaves[0].ndim + 1)))


def _host_kernel(leaves: list[Any], arrays: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray]:
    return _host_rows([array for (array,) in arrays])


def _arithmetic(leaf: jax.Array) -> bool:
    """Whether `_zero_count` counts by float arithmetic alone: on a CPU."""
    return next(iter(leaf.sharding.device_set)).platform == "cpu"  # type: ignore[attr-defined]


def _device_kernel(leaf: jax.Array) -> list[tuple[Any, Any, Any, Any]]:
    return [_reduce_one(piece, _arithmetic(leaf)) for piece in _pieces(leaf)]


def _group_kernel(leaves: list[jax.Array]) -> list[tuple[Any, Any, Any, Any]] | None:
    """`_device_kernel`'s results of arrays of one shape, dtype and placement, stacked (each one
    piece), on an accelerator; None on a CPU (where XLA runs one program's reductions of several
    arrays slower than as many programs) and for arrays reduced in slices."""
    if leaves[0].size > _COUNTED or _arithmetic(leaves[0]):
        return None
    return [_reduce_many(tuple(leaves), _arithmetic(leaves[0]))]


_STATISTICS: Kernel[Any] = Kernel(
    host=_host_kernel,
    device=_device_kernel,
    group=_group_kernel,
    stack=lambda leaves: _reduce_stack(*leaves),
    stackable=lambda leaf: bool(jnp.issubdtype(leaf.dtype, jnp.floating)),
)
"""The statistics on the engine: host rows in float64 (`_host_rows`); a large leaf's where it
lives, piece by piece (`_reduce_one`), up to `GROUP` of one shape in one call (`_reduce_many`);
small float leaves stacked (`_reduce_stack`)."""


def _numbers(leaves: Sequence[Any]) -> tuple[np.ndarray, list[int], list[Any]]:
    """Which leaves hold numbers (`is_numeric`), and the positions and values of those that do: a
    `jax.Array` as it is, a host value as a NumPy array (`host_number`; a Python int beyond
    float64's range has none)."""
    values = [unwrap(leaf) for leaf in leaves]
    numeric = np.fromiter(map(is_numeric, values), dtype=bool, count=len(values))
    positions: list[int] = []
    items: list[Any] = []
    for position in np.flatnonzero(numeric).tolist():
        value = values[position]
        if not isinstance(value, jax.Array):
            value = host_number(value)
        if value is not None:
            positions.append(position)
            items.append(value)
    return numeric, positions, items


def leaf_table(leaves: Sequence[Any]) -> LeafTable:
    """The statistics of every leaf (see `LeafTable`)."""
    numeric, positions, items = _numbers(leaves)
    counts = np.zeros((len(leaves), len(COUNTS)), np.int64)
    sums = np.tile(np.asarray(_NEUTRAL), (len(leaves), 1))
    rows_of = np.asarray(positions, dtype=np.int64)
    parts = split(items, lambda item: (item,), lambda item, arrays: arrays[0])
    computed = parts.items
    part_counts = np.zeros((len(computed), len(COUNTS)), np.int64)
    part_sums = np.tile(np.asarray(_NEUTRAL), (len(computed), 1))
    owner = np.asarray(parts.owner, dtype=np.int64)
    traced: list[tuple[np.ndarray, Any, bool]] = []
    for piece in run(computed, _STATISTICS):
        rows = np.asarray(piece.items, dtype=np.int64)
        if piece.where == "host":
            part_counts[rows], part_sums[rows] = piece.output
        elif piece.where == "stacked":
            part_counts[rows] = np.asarray(piece.output[0], np.int64)
            part_sums[rows] = _with_scale(np, np.asarray(piece.output[1], np.float64))
        elif piece.where == "device":
            [item] = piece.items
            complex_ = bool(jnp.issubdtype(computed[item].dtype, jnp.complexfloating))
            part_counts[item], part_sums[item] = _merged_pieces(computed[item], piece.output, complex_)
        else:
            complex_ = bool(jnp.issubdtype(computed[piece.items[0]].dtype, jnp.complexfloating))
            traced.append((rows_of[owner[rows]], piece.output, complex_))
    if not (parts.spread or parts.exchanged):
        counts[rows_of], sums[rows_of] = part_counts, part_sums
    else:
        merged = combined(parts, list(zip(part_counts, part_sums, strict=True)), _merged_rows)
        for position, row in zip(rows_of.tolist(), merged, strict=True):
            if row is not None:
                counts[position], sums[position] = row
    if not traced:
        return LeafTable(counts, sums, numeric)
    return _with_traced(traced, counts, sums, numeric)


def _merged_rows(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The row of an array from its shards' rows."""
    merged = _merge(np, np.stack([c for c, _ in rows]), np.stack([s for _, s in rows]))
    return np.asarray(merged[:4], np.int64), np.asarray(merged[4:], np.float64)


def _merged_pieces(
    leaf: jax.Array, results: list[tuple[Any, Any, Any, Any]], complex_: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A large leaf's row from the fetched rows of its pieces (`_pieces`), those `_reduce_one`
    could not give reduced again (`_reduce_masked`)."""
    again = [i for i, (*_, verdict) in enumerate(results) if int(verdict) != _RIGHT]
    if again:
        with jax.ensure_compile_time_eval():  # a concrete leaf closed over by a traced function too
            pieces = _pieces(leaf)
            redone = jax.device_get([_reduce_masked(pieces[i]) for i in again])
        results = list(results)
        for i, row in zip(again, redone, strict=True):
            results[i] = row
    parts = []
    for piece_counts, piece_sums, extremes, _ in results:
        piece_sums = _with_scale(np, np.asarray(piece_sums, np.float64), complex_)
        if extremes is not None:  # an integer array's, exact
            piece_sums[:2] = np.asarray(extremes).astype(np.float64)
        parts.append((np.asarray(piece_counts, np.int64), piece_sums))
    return _merged_rows(parts)


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
    traced: list[tuple[np.ndarray, Any, bool]], counts: np.ndarray, sums: np.ndarray, numeric: np.ndarray
) -> LeafTable:
    """The table under `jit`: the host rows, then the traced leaves' rows (of the leaves `rows`,
    complex or not), reduced in the trace."""
    integer, floating = jax.dtypes.canonicalize_dtype(np.int64), jax.dtypes.canonicalize_dtype(np.float64)
    scaled = [_with_scale(jnp, s.astype(floating), complex_) for _, (_, s), complex_ in traced]
    index = np.concatenate([rows for rows, _, _ in traced])
    all_counts = jnp.concatenate([c.astype(integer) for _, (c, _), _ in traced])
    all_sums = jnp.concatenate([s.astype(floating) for s in scaled])
    with np.errstate(over="ignore"):  # a host value beyond float32 (without x64) reads as inf
        host_sums = np.asarray(sums).astype(floating)
    table_counts = jnp.asarray(counts, integer).at[index].set(all_counts)
    table_sums = jnp.asarray(host_sums).at[index].set(all_sums)
    return LeafTable(table_counts, table_sums, numeric)


def nonfinite_candidates(leaves: Sequence[Any]) -> list[int]:
    """The positions of the leaves that may hold a NaN or an Inf, by one reduction of each float
    leaf where it lives (`_SUMS`: one read of its data, where `leaf_table` takes five): its sum.
    A NaN or an Inf makes every sum that holds it non-finite, so a leaf with a finite sum holds
    neither; a sum of finite values that overflows makes its leaf a candidate too, which
    `leaf_table` of the candidates settles. Integer, bool and non-numeric leaves hold none; a
    leaf in a trace is a candidate. Every process of a multi-process run gets the same list (the
    leaves that may hold one on any process), for `leaf_table`, which exchanges their results.

    >>> nonfinite_candidates([jnp.ones(3), jnp.array([1.0, jnp.inf]), jnp.arange(3), 2.5])
    [1]
    """
    candidates: list[int] = []
    positions: list[int] = []
    items: list[Any] = []
    inexact: dict[Any, bool] = {}
    for position, value in zip(*_numbers(leaves)[1:], strict=True):
        if isinstance(value, jax.core.Tracer):
            candidates.append(position)
            continue
        dtype = value.dtype
        if dtype not in inexact:
            inexact[dtype] = bool(jnp.issubdtype(dtype, jnp.inexact))
        if inexact[dtype]:
            positions.append(position)
            items.append(value)
    parts = split(items, lambda item: (item,), lambda item, arrays: arrays[0])
    finite: list[Any] = [True] * len(parts.items)
    for piece in run(parts.items, _SUMS):
        output = piece.output[0] if piece.where == "stacked" else piece.output  # a bool, or a row each
        found = np.asarray(output).reshape(-1).tolist()
        for item, verdict in zip(piece.items, found, strict=True):
            finite[item] = bool(verdict)
    if parts.spread or parts.exchanged:
        finite = combined(parts, finite, all)
    candidates.extend(
        position for position, verdict in zip(positions, finite, strict=True) if verdict is False
    )
    if parts.exchanged:  # a value of one process's own (a loss, a host array) may be NaN there alone
        return sorted(set().union(*every_process(candidates)))
    return sorted(candidates)


def _wide_sum(x: Any, axes: Any = None) -> Any:
    """The sum of `x` in at least float32 (complex64 for a complex array)."""
    return x.sum(axes, dtype=at_least_float32(x.dtype))


@jax.jit
def _finite_sum(leaf: Shaped[Array, "*shape"]) -> Bool[Array, ""]:
    return jnp.isfinite(_wide_sum(leaf))


@jax.jit
def _finite_sums(*leaves: Shaped[Array, "*shape"]) -> tuple[Bool[Array, " leaves"]]:
    stacked = jnp.stack(leaves)
    return (jnp.isfinite(_wide_sum(stacked, tuple(range(1, stacked.ndim)))),)


def _host_finite(leaves: list[Any], arrays: list[tuple[np.ndarray, ...]]) -> list[bool]:
    with np.errstate(all="ignore"):  # a longdouble in float64, as `leaf_table` reads it
        return [bool(np.isfinite(_in_float64(array)).all()) for (array,) in arrays]


def _in_float64(array: np.ndarray) -> np.ndarray:
    """A longdouble (or its complex) array in float64 (complex128); any other as it is."""
    if array.dtype.kind in "fc" and array.dtype.itemsize > (8 if array.dtype.kind == "f" else 16):
        return array.astype(np.float64 if array.dtype.kind == "f" else np.complex128)
    return array


_SUMS: Kernel[Any] = Kernel(
    host=_host_finite,
    device=_finite_sum,
    stack=lambda leaves: _finite_sums(*leaves),
)
"""`nonfinite_candidates` on the engine: on the host whether every element is finite (exact); on
a device whether the leaf's sum is; many small leaves stacked."""


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
