"""Value statistics of a tree's leaves, computed where the arrays live (README: What is wrong here).

Each numeric leaf gets eight numbers: NaN, Inf, finite and zero counts, and the minimum, maximum,
sum and sum of squares of its finite elements. Small leaves of one shape, dtype and sharding are
stacked and reduced together by one compiled function per chunk of up to `_CHUNK` leaves, so a
state of 20,000 small leaves costs a few compilations and about a hundred dispatches; a large or
sharded leaf is reduced on its own, where its shards are (XLA reduces each shard and combines the
partial results, never gathering the array). Eagerly, the small results come to the host in one
`jax.device_get`; under `jit` they stay tracers.

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
from jaxtyping import Array, Float, Int

from ._compat import is_nnx_variable_type, variable_value

_CHUNK = 256
_LARGE = 1 << 16
"""Leaves with at least this many elements are reduced on their own."""
COUNTS = ("nan", "inf", "finite", "zeros")
SUMS = ("min", "max", "sum", "sumsq")
STAT_KEYS = ("nan", "inf", "min", "max", "mean", "rms", "zero_fraction")
"""The keys of each statistics dict: counts of NaN and Inf, then over the finite elements."""


@dataclass(frozen=True)
class LeafTable:
    """Per-leaf statistics: `counts[i]` (NaN, Inf, finite, zeros) and `sums[i]` (min, max, sum and
    sum of squares of the finite elements) of leaf `i`; `numeric[i]` False for a leaf without
    values (a PRNG key, a string, an abstract leaf), whose rows are zeros."""

    counts: Int[Array, "leaves 4"] | np.ndarray
    sums: Float[Array, "leaves 4"] | np.ndarray
    numeric: np.ndarray


def _value(leaf: Any) -> Any:
    return variable_value(leaf) if is_nnx_variable_type(type(leaf)) else leaf


def is_numeric(leaf: Any) -> bool:
    """A leaf with numbers to summarise: a numeric or bool array or scalar, concrete or traced."""
    leaf = _value(leaf)
    if isinstance(leaf, jax.ShapeDtypeStruct) or leaf is None or isinstance(leaf, str | bytes):
        return False
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return isinstance(leaf, bool | int | float | complex)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return False
    return bool(jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_))


def _reduce(stack: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    """Counts and sums of `stack` over `axes` (jnp under `jit`, np on the host)."""
    xp = jnp if isinstance(stack, jax.Array) else np
    if xp.iscomplexobj(stack):
        stack = xp.abs(stack)
    x = stack.astype(xp.float32)
    nan, inf = xp.isnan(x), xp.isinf(x)
    finite = ~(nan | inf)
    clean = xp.where(finite, x, 0)
    counts = xp.stack(
        [nan.sum(axes), inf.sum(axes), finite.sum(axes), (finite & (x == 0)).sum(axes)], axis=-1
    ).astype(xp.int32)
    sums = xp.stack(
        [
            xp.where(finite, x, xp.inf).min(axes),
            xp.where(finite, x, -xp.inf).max(axes),
            clean.sum(axes),
            (clean * clean).sum(axes),
        ],
        axis=-1,
    )
    return counts, sums


@functools.partial(jax.jit, static_argnums=0)
def _reduce_chunk(ndim: int, *leaves: Any) -> tuple[Any, Any]:
    return _reduce(jnp.stack(leaves), tuple(range(1, ndim + 1)))


@jax.jit
def _reduce_one(leaf: Any) -> tuple[Any, Any]:
    """The statistics of one large leaf, in few passes over its memory: a NaN or Inf makes the sum
    non-finite, so a finite sum and sum of squares (the usual case) leave only the zeros to count;
    otherwise the exact masked reductions of `_reduce` run (`lax.cond` runs one branch)."""
    x = (jnp.abs(leaf) if jnp.iscomplexobj(leaf) else leaf).astype(jnp.float32)
    total, squares = x.sum(), (x * x).sum()

    def finite(_: None) -> tuple[Any, Any]:
        size = jnp.int32(x.size)
        zeros = jax.lax.cond(
            jnp.abs(x).min() > 0,  # no zero at all: nothing to count (a moment after training)
            lambda: jnp.int32(0),
            lambda: size - jnp.sign(jnp.abs(x)).sum().astype(jnp.int32),  # float ops vectorise
        )
        counts = jnp.stack([jnp.int32(0), jnp.int32(0), size, zeros])
        return counts, jnp.stack([x.min(), x.max(), total, squares])

    def masked(_: None) -> tuple[Any, Any]:
        counts, sums = _reduce(x[None], tuple(range(1, x.ndim + 1)))
        return counts[0], sums[0]

    counts, sums = jax.lax.cond(jnp.isfinite(total) & jnp.isfinite(squares), finite, masked, None)
    return counts[None], sums[None]


def _reduced_alone(leaf: Any) -> bool:
    """A leaf reduced on its own, where its shards are: large, or placed on several devices."""
    if isinstance(leaf, jax.core.Tracer):
        return leaf.size >= _LARGE
    return leaf.size >= _LARGE or len(leaf.sharding.device_set) > 1


@functools.cache
def _array_type() -> type:
    """`jax.Array`'s concrete type (`ArrayImpl`, not public), made on first use: importing the
    package must not start a backend."""
    return type(jnp.zeros((), jnp.int8))


_NUMERIC: dict[tuple[type, Any], bool] = {}


def _is_numeric_fast(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or type(leaf) is jax.ShapeDtypeStruct:
        return is_numeric(leaf)
    key = (type(leaf), dtype)
    found = _NUMERIC.get(key)
    if found is None:
        found = _NUMERIC[key] = is_numeric(leaf)
    return found


def leaf_table(leaves: Sequence[Any]) -> LeafTable:
    """The statistics of every leaf (see `LeafTable`); tracers under `jit`, NumPy arrays eagerly."""
    values = list(leaves)
    numeric = np.zeros(len(values), dtype=bool)
    pieces: list[tuple[list[int], Any, Any]] = []
    groups: dict[Any, list[int]] = {}
    alone: dict[Any, bool] = {}
    traced = False
    array_type = _array_type()
    for position, value in enumerate(values):
        if type(value) is not array_type:  # the common case, an array, takes no detour
            if is_nnx_variable_type(type(value)):
                value = values[position] = variable_value(value)
            if not _is_numeric_fast(value):
                continue
            traced = traced or isinstance(value, jax.core.Tracer)
            if not isinstance(value, jax.Array):
                value = values[position] = np.asarray(value)
                numeric[position] = True
                pieces.append(([position], *_reduce(value[None], tuple(range(1, value.ndim + 1)))))
                continue
        elif not _is_numeric_fast(value):
            continue
        numeric[position] = True
        key = (value.shape, value.dtype, None if traced else value.sharding)
        decided = alone.get(key)
        if decided is None:
            decided = alone[key] = _reduced_alone(value)
        if decided:
            pieces.append(([position], *_reduce_one(value)))
        else:
            groups.setdefault(key, []).append(position)
    for (shape, _, _), members in groups.items():
        for start in range(0, len(members), _CHUNK):
            chunk = members[start : start + _CHUNK]
            size = min(_CHUNK, 1 << (len(chunk) - 1).bit_length())
            padded = [values[i] for i in chunk] + [values[chunk[0]]] * (size - len(chunk))
            pieces.append((chunk, *_reduce_chunk(len(shape), *padded)))
    results = [(counts, sums) for _, counts, sums in pieces]
    if not traced:
        results = jax.device_get(results)  # one transfer of the small results
    trimmed = [(p[0], c[: len(p[0])], s[: len(p[0])]) for p, (c, s) in zip(pieces, results, strict=True)]
    return _assemble(len(leaves), numeric, trimmed, traced)


def _assemble(
    count: int, numeric: np.ndarray, pieces: list[tuple[list[int], Any, Any]], traced: bool
) -> LeafTable:
    order = [position for positions, _, _ in pieces for position in positions]
    xp: Any = jnp if traced else np
    counts = xp.zeros((count, 4), xp.int32)
    sums = xp.zeros((count, 4), xp.float32)
    if pieces:
        all_counts = xp.concatenate([xp.asarray(c).reshape(-1, 4) for _, c, _ in pieces])
        all_sums = xp.concatenate([xp.asarray(s, dtype=xp.float32).reshape(-1, 4) for _, _, s in pieces])
        index = np.asarray(order)
        if traced:
            counts, sums = counts.at[index].set(all_counts), sums.at[index].set(all_sums)
        else:
            counts[index], sums[index] = all_counts, all_sums
    return LeafTable(counts, sums, numeric)


def summarise(table: LeafTable, leaves: Sequence[int] | slice) -> dict[str, Any]:
    """The statistics of the leaves `leaves` together, as `STAT_KEYS`: NaN and Inf counts, then the
    min, max, mean, RMS and fraction of zeros of their finite elements (NaN where none is)."""
    xp: Any = np if isinstance(table.counts, np.ndarray) else jnp
    chosen = leaves if isinstance(leaves, slice) else np.asarray(leaves, dtype=np.int64)
    counts, sums = table.counts[chosen], table.sums[chosen]
    nan, inf, finite, zeros = (counts[:, k].sum() for k in range(4))
    minimum = xp.where(finite > 0, sums[:, 0].min(initial=np.inf), np.nan) if len(counts) else np.nan
    maximum = xp.where(finite > 0, sums[:, 1].max(initial=-np.inf), np.nan) if len(counts) else np.nan
    denominator = xp.maximum(finite, 1).astype(xp.float32)
    nothing = finite == 0
    result = {
        "nan": nan,
        "inf": inf,
        "min": minimum,
        "max": maximum,
        "mean": xp.where(nothing, np.nan, sums[:, 2].sum() / denominator),
        "rms": xp.where(nothing, np.nan, xp.sqrt(sums[:, 3].sum() / denominator)),
        "zero_fraction": xp.where(nothing, np.nan, zeros / denominator),
    }
    return {
        key: xp.asarray(value, xp.int32 if key in ("nan", "inf") else xp.float32)[()]
        for key, value in result.items()
    }
