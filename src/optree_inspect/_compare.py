"""The values of leaf pairs compared, exactly, on the device engine (`_engine`): `diff`'s kernels.

Numbers are compared in their own dtypes (`_elementwise`: integers of 64 bits and floats beyond
float32 exactly, NaN equal to NaN, a difference of finite floats that overflows by its half),
with NumPy on the host or with `jax.numpy` where a pair lives (many small float pairs of one
shape stacked, `_stack_compare`); text, dates and objects with `==`.

>>> import jax.numpy as jnp
>>> [c.changed for c in compare_values([Pair(jnp.zeros(3), jnp.array([0.0, 1, 2]), 1, True)], 0.0, 0.0)]
[2]
"""

from __future__ import annotations

import functools
import operator
from decimal import Decimal
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Shaped

from ._engine import Kernel, combined, every_process, run, split
from ._leaf import at_least_float32

_DEVICE_GROUP = 1 << 22
"""Large leaves are compared where they live, by one compiled function per shape, dtypes and
placement, when the leaves of that key hold at least this many elements together: so that each
compilation is paid for by as much data, and many distinct shapes cost no compilation."""
_COUNTS = 6


class Pair(NamedTuple):
    """Two concrete leaves of one shape whose values are compared: `words` values make one element
    (a PRNG key's key data), and `numeric` tells numbers (compared exactly, with tolerances) from
    text and objects (compared with `==`)."""

    a: Any
    b: Any
    words: int
    numeric: bool


class Compared(NamedTuple):
    """One pair's comparison: elements that differ, of how many; of those, how many became NaN,
    Inf or -Inf in `b` and how many were NaN or Inf in `a`; how many have a finite difference, the
    largest of these and the largest relative one (over a nonzero `|b|`)."""

    changed: int
    size: int
    nan: int
    inf: int
    neginf: int
    unfinite: int
    measured: int
    largest: int | float | Decimal
    relative: float


_NOTHING = Compared(0, 0, 0, 0, 0, 0, 0, 0, 0.0)
"""The comparison of leaves without elements."""


def compare_values(pairs: list[Pair], rtol: float, atol: float) -> list[Compared]:
    """Each pair compared (see `Compared`): small pairs, and larger ones whose shape the others do
    not share enough (`_DEVICE_GROUP`), on the host; the rest where they live, without gathering
    them; all results in one transfer."""
    found, _ = _compared_items(pairs, rtol, atol, verdicts=False)
    return [_NOTHING if compared is None else compared for compared in found]


def values_equal(a: list[Any], b: list[Any], rtol: float, atol: float) -> bool:
    """Whether each number array of `a` equals the one of `b` at its position, by
    `compare_values`' rules, without building a row for each pair (a state and its restore).

    >>> import jax.numpy as jnp
    >>> values_equal([jnp.zeros(3)], [jnp.array([0.0, -0.0, 0.0])], 0.0, 0.0)
    True
    """
    found, exchanged = _compared_items(list(zip(a, b, strict=True)), rtol, atol, verdicts=True)
    equal = all(verdict is None or bool(verdict) for verdict in found)  # None: no elements
    # a process's own arrays may differ on one process only: every process then walks the trees,
    # whose comparisons make the same exchanges on each
    return all(every_process(equal)) if exchanged else equal


def _pair(item: Any) -> Pair:
    return item if isinstance(item, Pair) else Pair(item[0], item[1], 1, True)


def _compared_items(
    items: list[Pair] | list[tuple[Any, Any]], rtol: float, atol: float, verdicts: bool
) -> tuple[list[Any], bool]:
    """`compare_values` of `items` (`Pair`s, or `(a, b)` of numbers, one value an element): each
    item's `Compared` (None: without elements), or with `verdicts` whether it is equal; and
    whether the processes exchanged results (`Split.exchanged`)."""
    tolerant = rtol > 0 or atol > 0
    kernel: Kernel[Any] = Kernel(
        arrays=_arrays,
        host=lambda found, arrays: _host_compare(list(map(_pair, found)), arrays, rtol, atol),
        device=lambda item: _device_compare_pair(_pair(item), rtol, atol),
        group=lambda found: _device_group(list(map(_pair, found))),
        key=None if verdicts else _words,
        together=_DEVICE_GROUP,
        stack=lambda found: _stack_compare(
            tuple(item[0] for item in found), tuple(item[1] for item in found), rtol, atol, tolerant
        ),
        stackable=lambda item: _stackable(_pair(item)),
    )
    parts = split(items, _arrays, _with_arrays)
    results: list[Any] = [None if verdicts else _NOTHING] * len(parts.items)
    large: list[tuple[int, Any]] = []
    for piece in run(parts.items, kernel):
        if piece.where == "device":
            [i] = piece.items
            large.append((i, piece.output))
        elif piece.where == "stacked" and verdicts:
            equal = np.asarray(piece.output[0])[:, 0] == 0
            for i, verdict in zip(piece.items, equal.tolist(), strict=True):
                results[i] = verdict
        elif piece.where == "stacked":
            rows = _stacked_rows(_pair(parts.items[piece.items[0]]), *piece.output)
            for i, row in zip(piece.items, rows, strict=True):
                results[i] = row
        else:
            for i, found in zip(piece.items, piece.output, strict=True):
                results[i] = found.changed == 0 if verdicts else found
    if large:
        found = _device_results(
            [_pair(parts.items[i]) for i, _ in large], [output for _, output in large], rtol, atol
        )
        for (i, _), compared in zip(large, found, strict=True):
            results[i] = compared.changed == 0 if verdicts else compared
    if not (parts.spread or parts.exchanged):
        return results, False
    merge = (lambda shards: all(shard is None or bool(shard) for shard in shards)) if verdicts else _merged
    return combined(parts, results, merge), parts.exchanged


_arrays = operator.itemgetter(0, 1)
"""The two arrays of a `Pair` or an `(a, b)` item."""


def _words(pair: Pair) -> int:
    return pair.words


def _with_arrays(item: Any, arrays: tuple[Any, ...]) -> Any:
    """`item` with `arrays` in place of its own (a shard of each, or this process's copy)."""
    return item._replace(a=arrays[0], b=arrays[1]) if isinstance(item, Pair) else arrays


def _merged(shards: list[Compared]) -> Compared:
    """A pair's comparison from its shards'."""
    return Compared(
        changed=sum(c.changed for c in shards),
        size=sum(c.size for c in shards),
        nan=sum(c.nan for c in shards),
        inf=sum(c.inf for c in shards),
        neginf=sum(c.neginf for c in shards),
        unfinite=sum(c.unfinite for c in shards),
        measured=sum(c.measured for c in shards),
        largest=max(c.largest for c in shards),
        relative=max(c.relative for c in shards),
    )


def _on_one_device_set(pair: Pair) -> tuple[jax.Array, jax.Array]:
    """The pair's arrays, `b` moved to `a`'s devices: a compiled function takes arrays on one set."""
    a, b = pair.a, pair.b
    return a, (b if a.sharding.device_set == b.sharding.device_set else jax.device_put(b, a.sharding))


def _device_compare_pair(pair: Pair, rtol: float, atol: float) -> tuple[Any, Any]:
    """A large pair where it lives: two float arrays of one dtype first tested for equality alone
    (`_equal_floats`: one float reduction, where the comparison takes several masked ones), as
    `(equal, None)`; any other compared at once, as `(None, outputs of _device_compare)`."""
    a, b = _on_one_device_set(pair)
    if _floats_of_one_dtype(pair):
        return _equal_floats(a, b), None
    return None, _device_compare(a, b, rtol, atol, rtol > 0 or atol > 0, pair.words)


def _device_group(pairs: list[Pair]) -> tuple[Any, None] | None:
    """`_device_compare_pair`'s results of float pairs of one shape, dtype and placement, stacked,
    on an accelerator; None elsewhere (on a CPU XLA runs one program's reductions of several
    arrays slower than as many programs)."""
    if not _floats_of_one_dtype(pairs[0]) or _on_cpu(pairs[0].a):
        return None
    moved = [_on_one_device_set(pair) for pair in pairs]
    return _equal_many(tuple(a for a, _ in moved), tuple(b for _, b in moved)), None


def _floats_of_one_dtype(pair: Pair) -> bool:
    return (
        pair.words == 1 and pair.a.dtype == pair.b.dtype and bool(jnp.issubdtype(pair.a.dtype, jnp.floating))
    )


def _on_cpu(array: jax.Array) -> bool:
    return next(iter(array.sharding.device_set)).platform == "cpu"  # type: ignore[attr-defined]


@jax.jit
def _equal_many(
    a: tuple[Float[Array, "*shape"], ...], b: tuple[Float[Array, "*shape"], ...]
) -> Bool[Array, " pairs"]:
    """`_equal_floats` of each pair, stacked."""
    return jnp.stack([_equal_floats(x, y) for x, y in zip(a, b, strict=True)])


def _device_results(
    pairs: list[Pair], outputs: list[tuple[Any, Any]], rtol: float, atol: float
) -> list[Compared]:
    """The comparisons of large pairs from `_device_compare_pair`'s fetched outputs: those found
    unequal are compared now, all in one transfer."""
    unequal = [i for i, (equal, _) in enumerate(outputs) if equal is not None and not bool(equal)]
    with jax.ensure_compile_time_eval():  # concrete arrays closed over by a traced function too
        pending = {
            i: _device_compare(*_on_one_device_set(pairs[i]), rtol, atol, rtol > 0 or atol > 0, 1)
            for i in unequal
        }
        fetched = jax.device_get(pending)
    results = []
    for i, (pair, (equal, compared)) in enumerate(zip(pairs, outputs, strict=True)):
        if equal is not None and bool(equal):
            results.append(Compared(0, int(np.size(pair.a)), 0, 0, 0, 0, 0, 0.0, 0.0))
        else:
            results.append(_compared(pair, *fetched.get(i, compared)))
    return results


@functools.partial(jax.jit, static_argnums=(4, 5))
def _device_compare(
    a: Shaped[Array, "*shape"], b: Shaped[Array, "*shape"], rtol: Any, atol: Any, tolerant: bool, words: int
) -> tuple[Int[Array, "partials counts=6"], Shaped[Array, ""], Float[Array, ""], Float[Array, ""]]:
    """One pair compared where it lives (`_elementwise`): its partial counts (`_count`), largest
    difference, largest half difference and largest relative difference."""
    parts = _elementwise(jnp, a.reshape(-1), b.reshape(-1), rtol, atol, tolerant, _wide(jnp))
    counts, gap, half, rel = _units(jnp, parts, words)
    largest = gap.max(initial=0)
    return (
        jnp.stack([_count(mask) for mask in counts], axis=-1),
        largest,
        half.max(initial=0),
        rel.max(initial=0),
    )


@jax.jit
def _equal_floats(a: Float[Array, "*shape"], b: Float[Array, "*shape"]) -> Bool[Array, ""]:
    """Whether two finite float arrays of one shape are equal, element by element (-0 equal to 0),
    by one float reduction: the sum of their differences' magnitudes, each array first multiplied
    by `2**(nmant + 1)` (exact), so that the difference of two distinct floats is never below the
    smallest normal number, which a device may flush to zero. False where an element is NaN or
    Inf, or beyond the largest float over that factor."""
    wide = at_least_float32(a.dtype)
    factor = 2.0 ** (jnp.finfo(wide).nmant + 1)
    return jnp.abs(a.astype(wide) * factor - b.astype(wide) * factor).sum() == 0


def _stackable(pair: Pair) -> bool:
    """Small float pairs of one dtype on one device, compared stacked there: in the float NumPy
    would use too (`_float_type`), so the rows are the host's."""
    return (
        _floats_of_one_dtype(pair)
        and pair.a.sharding.device_set == pair.b.sharding.device_set  # one compiled call takes both
    )


@functools.partial(jax.jit, static_argnums=(4,))
def _stack_compare(
    a: tuple[Shaped[Array, "*shape"], ...],
    b: tuple[Shaped[Array, "*shape"], ...],
    rtol: Any,
    atol: Any,
    tolerant: bool,
) -> tuple[Int[Array, "pairs 6"], Shaped[Array, " pairs"], Float[Array, " pairs"], Float[Array, " pairs"]]:
    """Small pairs of one shape, dtypes and device, stacked and compared at once: a row of
    `_device_compare`'s results a pair (their counts below 2**16 each: `engine.SMALL`)."""
    count = len(a)
    flat_a, flat_b = jnp.stack(a).reshape(count, -1), jnp.stack(b).reshape(count, -1)
    parts = _elementwise(jnp, flat_a, flat_b, rtol, atol, tolerant, _wide(jnp))
    counts, gap, half, rel = _units(jnp, parts, 1)
    return (
        jnp.stack([mask.sum(1, dtype=jnp.int32) for mask in counts], axis=-1),
        gap.max(1, initial=0),
        half.max(1, initial=0),
        rel.max(1, initial=0),
    )


def _count(mask: Any) -> Any:
    """Partial counts of `mask`, each below 2**31 (int32 without x64), to add up on the host."""
    flat = mask.reshape(-1)
    if flat.size < 1 << 31:
        return flat.sum(dtype=jnp.int32)[None]
    rows = -(-flat.size // (1 << 30))
    return jnp.pad(flat, (0, rows * (1 << 30) - flat.size)).reshape(rows, 1 << 30).sum(1, dtype=jnp.int32)


def _compared(pair: Pair, counts: Any, largest: Any, half: Any, rel: Any) -> Compared:
    changed, nan, inf, neginf, unfinite, measured = map(
        int, np.asarray(counts, dtype=np.int64).reshape(-1, _COUNTS).sum(0)
    )
    size = int(np.size(pair.a)) // pair.words
    return Compared(changed, size, nan, inf, neginf, unfinite, measured, _largest(largest, half), float(rel))


def _stacked_rows(first: Pair, counts: Any, largest: Any, half: Any, rel: Any) -> list[Compared]:
    """`_compared` of each row of `_stack_compare`'s results, for pairs of `first`'s shape."""
    size = int(np.size(first.a))
    rows = np.asarray(counts, dtype=np.int64).tolist()
    found = []
    for (changed, nan, inf, neginf, unfinite, measured), gap, halved, relative in zip(
        rows, np.asarray(largest).tolist(), np.asarray(half).tolist(), np.asarray(rel).tolist(), strict=True
    ):
        gap = Decimal(halved) * 2 if halved > 0 else gap
        found.append(Compared(changed, size, nan, inf, neginf, unfinite, measured, gap, float(relative)))
    return found


def _largest(largest: Any, half: Any) -> int | float | Decimal:
    """The largest difference: `2 * half` where a difference of finite floats overflowed."""
    if float(half) > 0:
        return Decimal(float(half)) * 2
    value = np.asarray(largest)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


def _host_compare(
    pairs: list[Pair], fetched: list[tuple[np.ndarray, ...]], rtol: float, atol: float
) -> list[Compared]:
    """The pairs compared with NumPy, those of one pair of dtypes together, flattened end to end
    and reduced per leaf (`reduceat`)."""
    results: list[Compared | None] = [None] * len(pairs)
    groups: dict[Any, list[int]] = {}
    for i, (pair, (a, b)) in enumerate(zip(pairs, fetched, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        if a.size == 0:
            results[i] = _NOTHING
        elif not pair.numeric:
            count = int(np.count_nonzero(~_same_objects(a.reshape(-1), b.reshape(-1))))
            results[i] = Compared(count, a.size, 0, 0, 0, 0, 0, 0, 0.0)
        else:
            groups.setdefault((a.dtype, b.dtype, pair.words), []).append(i)
    for (_, _, words), members in groups.items():
        flat_a = np.concatenate([np.asarray(fetched[i][0]).reshape(-1) for i in members])
        flat_b = np.concatenate([np.asarray(fetched[i][1]).reshape(-1) for i in members])
        with np.errstate(all="ignore"):
            parts = _elementwise(np, flat_a, flat_b, rtol, atol, rtol > 0 or atol > 0, np.dtype(np.float64))
            counts, gap, half, rel = _units(np, parts, words)
        units = [int(np.size(fetched[i][0])) // words for i in members]
        starts = np.cumsum([0, *units[:-1]])
        per_leaf = np.stack([np.add.reduceat(mask, starts, dtype=np.int64) for mask in counts], axis=-1)
        largest, halves, rels = (np.maximum.reduceat(x, starts) for x in (gap, half, rel))
        for row, i in enumerate(members):
            results[i] = _compared(pairs[i], per_leaf[row], largest[row], halves[row], rels[row])
    return results  # type: ignore[return-value]


def _same_objects(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element by element `==` of text, dates or objects; NaT equals NaT, and NaN NaN."""
    if a.dtype.kind in "mM":
        return (a == b) | (np.isnat(a) & np.isnat(b))
    if a.dtype.kind == "O" or b.dtype.kind == "O":
        return np.array(
            [equal_objects(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)], dtype=bool
        )
    try:
        return np.asarray(a == b, dtype=bool).reshape(a.shape)
    except Exception:
        return np.array(
            [equal_objects(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)], dtype=bool
        )


def equal_objects(a: Any, b: Any) -> bool:
    """`a == b` for Python values, where a float or complex NaN equals NaN."""
    if isinstance(a, float | complex) and isinstance(b, float | complex) and a != a and b != b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _wide(xp: Any) -> Any:
    """The float that holds integers for tolerances and reporting: float64 (float32 on a device
    without x64)."""
    return np.dtype(np.float64) if xp is np else jax.dtypes.canonicalize_dtype(np.float64)


def _units(xp: Any, parts: tuple[Any, ...], words: int) -> tuple[list[Any], Any, Any, Any]:
    """The per-element results, per element of `words` values (a PRNG key: changed when any of its
    words is; its data has no magnitude)."""
    if words == 1:
        return list(parts[:_COUNTS]), *parts[_COUNTS:]
    changed = parts[0].reshape(-1, words).any(1)
    nothing = xp.zeros_like(changed)
    zeros = xp.zeros(changed.shape, xp.float32)
    return [changed, *[nothing] * (_COUNTS - 1)], zeros, zeros, zeros


def _bitcast(xp: Any, x: Any, dtype: Any) -> Any:
    return x.view(dtype) if xp is np else jax.lax.bitcast_convert_type(x, dtype)


def _float_type(xp: Any, *dtypes: Any) -> Any:
    """A float (complex if one is) that holds every value of these inexact dtypes exactly."""
    complex_ = any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes)
    width = max(np.dtype(d).itemsize // (2 if jnp.issubdtype(d, jnp.complexfloating) else 1) for d in dtypes)
    real = np.longdouble if width > 8 else np.float64 if width == 8 else np.float32
    found = np.result_type(real, np.complex64) if complex_ else np.dtype(real)
    return found if xp is np else jax.dtypes.canonicalize_dtype(found)


def _elementwise(xp: Any, a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool, wide: Any) -> tuple[Any, ...]:
    """Per element of the flat arrays `a` and `b` (NumPy or jax.numpy, by `xp`): whether it
    changed (not equal as exact values, NaN equal to NaN, and, if `tolerant`, beyond
    `atol + rtol * |b|`); of those, whether it became NaN, Inf, -Inf, whether it was NaN or Inf,
    whether both are finite; the difference of those (exact for integers of one signedness), the
    half difference where that of two finite floats overflows, and the relative difference."""
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if b.dtype == np.bool_:
        b = b.astype(np.uint8)
    inexact_a, inexact_b = (bool(jnp.issubdtype(x.dtype, jnp.inexact)) for x in (a, b))
    if inexact_a and inexact_b:
        return _floats(xp, a, b, rtol, atol, tolerant)
    if not inexact_a and not inexact_b:
        return _integers(xp, a, b, rtol, atol, tolerant, wide)
    return _integer_and_float(xp, a, b, rtol, atol, tolerant, wide)


def _floats(xp: Any, a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool) -> tuple[Any, ...]:
    common = _float_type(xp, a.dtype, b.dtype)
    a, b = a.astype(common), b.astype(common)
    nan_a, nan_b = xp.isnan(a), xp.isnan(b)
    finite_a, finite_b = xp.isfinite(a), xp.isfinite(b)
    finite = finite_a & finite_b
    gap, scale = xp.abs(a - b), xp.abs(b)
    changed = ~((a == b) | (nan_a & nan_b))
    overflow = finite & xp.isinf(gap)  # |3e38 - -3e38| in float32: measured in halves
    half = xp.where(overflow, xp.abs(a * 0.5 - b * 0.5), 0)
    if tolerant:  # between finite values only: a value that became Inf is no closer for |b| = Inf
        within = xp.where(overflow, half <= atol * 0.5 + rtol * (scale * 0.5), gap <= atol + rtol * scale)
        changed = changed & ~(finite & within)
    measured = changed & finite
    if xp.iscomplexobj(b):
        inf, neginf = changed & ~finite_b & ~nan_b, xp.zeros_like(changed)
    else:
        inf, neginf = changed & (b == xp.inf), changed & (b == -xp.inf)
    half = xp.where(measured, half, 0)
    gap = xp.where(measured & ~overflow, gap, 0)
    positive = xp.where(scale > 0, scale, 1)
    rel = xp.where(scale > 0, xp.where(overflow, half / positive * 2, gap / positive), 0)
    return changed, changed & nan_b, inf, neginf, changed & ~finite_a & finite_b, measured, gap, half, rel


def _integers(xp: Any, a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool, wide: Any) -> tuple[Any, ...]:
    signed_a, signed_b = (bool(jnp.issubdtype(x.dtype, jnp.signedinteger)) for x in (a, b))
    if signed_a != signed_b:
        signed, unsigned = (a, b) if signed_a else (b, a)
        if signed.dtype.itemsize > unsigned.dtype.itemsize:  # the signed type holds every value
            a, b = a.astype(signed.dtype), b.astype(signed.dtype)
            signed_a = signed_b = True
    size = max(a.dtype.itemsize, b.dtype.itemsize)
    unsigned_type = np.dtype(f"uint{8 * size}")
    if signed_a == signed_b:
        common = np.promote_types(a.dtype, b.dtype)
        a, b = a.astype(common), b.astype(common)
        changed = a != b
        gap = _integer_gap(xp, a, b, unsigned_type)
        gap_float = gap.astype(wide)
    else:
        negative = signed < 0
        positive = xp.where(negative, 0, signed).astype(unsigned_type)
        other = unsigned.astype(unsigned_type)
        changed = negative | (positive != other)
        gap_float = xp.where(
            negative,
            other.astype(wide) - signed.astype(wide),
            (xp.maximum(positive, other) - xp.minimum(positive, other)).astype(wide),
        )
        gap = gap_float
    scale = xp.abs(b.astype(wide))
    if tolerant and signed_a == signed_b:  # the exact gap against the tolerance
        changed = changed & ~_within(xp, gap, atol + rtol * scale, unsigned_type)
    elif tolerant:
        changed = changed & ~(gap_float <= atol + rtol * scale)
    nothing = xp.zeros_like(changed)
    gap = xp.where(changed, gap, 0)
    rel = xp.where(changed & (scale > 0), gap_float / xp.where(scale > 0, scale, 1), 0)
    return changed, nothing, nothing, nothing, nothing, changed, gap, xp.zeros(changed.shape, wide), rel


def _integer_gap(xp: Any, a: Any, b: Any, unsigned_type: Any) -> Any:
    """`|a - b|` of two integer arrays of one dtype, exactly, in the unsigned type of its size:
    the difference wraps into the exact gap."""
    return _bitcast(xp, xp.maximum(a, b) - xp.minimum(a, b), unsigned_type)


def _within(xp: Any, gap: Any, threshold: Any, unsigned_type: Any) -> Any:
    """Whether each exact integer `gap` (of `unsigned_type`) is at most `threshold` (floats at
    least 0), compared as integers: with its floor, where that is below the type's range (a float
    rounds a gap above 2**53, or 2**24 in float32). A NaN threshold holds no gap."""
    limit = xp.floor(threshold)
    top = float(2 ** (8 * np.dtype(unsigned_type).itemsize))
    below = limit < top
    return (limit >= top) | (below & (gap <= xp.where(below, limit, 0).astype(unsigned_type)))


def _integer_and_float(
    xp: Any, a: Any, b: Any, rtol: Any, atol: Any, tolerant: bool, wide: Any
) -> tuple[Any, ...]:
    float_is_b = bool(jnp.issubdtype(b.dtype, jnp.inexact))
    integer, number = (a, b) if float_is_b else (b, a)
    real = xp.real(number).astype(_float_type(xp, xp.real(number).dtype, np.float32))
    info = np.iinfo(integer.dtype)
    whole = xp.isfinite(real) & (xp.floor(real) == real)
    if xp.iscomplexobj(number):
        whole = whole & (xp.imag(number) == 0)
    fits = whole & (real >= float(info.min)) & (real < float(info.max) + 1)  # bounds: powers of two
    as_integer = xp.where(fits, real, 0).astype(integer.dtype)  # exact where it fits
    changed = ~(fits & (as_integer == integer))
    finite = xp.isfinite(number)
    wide_number = number.astype(np.result_type(wide, np.complex64) if xp.iscomplexobj(number) else wide)
    unsigned_type = np.dtype(f"uint{8 * integer.dtype.itemsize}")
    exact_gap = _integer_gap(xp, as_integer, integer, unsigned_type)
    gap = xp.where(fits, exact_gap.astype(wide), xp.abs(integer.astype(wide) - wide_number))
    scale = xp.abs(wide_number if float_is_b else integer.astype(wide))
    if tolerant:
        threshold = atol + rtol * scale
        within = xp.where(fits, _within(xp, exact_gap, threshold, unsigned_type), gap <= threshold)
        changed = changed & ~(finite & within)
    measured = changed & finite
    nothing = xp.zeros_like(changed)
    if float_is_b:
        nan = changed & xp.isnan(number)
        if xp.iscomplexobj(number):
            inf, neginf = changed & ~finite & ~xp.isnan(number), nothing
        else:
            inf, neginf = changed & (number == xp.inf), changed & (number == -xp.inf)
        unfinite = nothing
    else:
        nan, inf, neginf, unfinite = nothing, nothing, nothing, changed & ~finite
    gap = xp.where(measured, xp.where(whole, xp.maximum(gap, 1), gap), 0)  # unequal integers: 1 apart
    rel = xp.where(scale > 0, gap / xp.where(scale > 0, scale, 1), 0)
    return changed, nan, inf, neginf, unfinite, measured, gap, xp.zeros(changed.shape, gap.dtype), rel
