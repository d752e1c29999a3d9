"""One device engine: a map-reduce over many items (a leaf; two leaves to compare), each computed
where it is cheapest, with one transfer of the results.

A verb gives a `Kernel` (a NumPy function of many small items, a device function of one item, and
optionally a device function of many stacked items) and merges the `Piece`s that `run` returns.
Where each item is computed, by its size and where its arrays live:

- on the host: items of fewer than `SMALL` elements that this process holds whole, and NumPy and
  Python items: fetched in batches of at most `HOST_BYTES` (the first with the device results, in
  one `jax.device_get`), then those of one dtype (each part's) and `Kernel.key` given to
  `Kernel.host` together, at most `HOST_ELEMENTS` elements a call. Nothing is compiled, so the
  number of compilations does not grow with the number of distinct shapes.
- stacked: `STACKED` or more small items of one shape, dtype and device that the kernel stacks
  (`Kernel.stackable`), computed on that device by `Kernel.stack`, `CHUNK` at a time (the last
  chunk padded to a power of two, at least `STACKED`): one compilation serves at least `STACKED`
  items, and their results are a few arrays.
- on their devices: larger items, and items this process does not hold whole, one `Kernel.device`
  call each, where the large items of one shape, dtypes and placement hold at least
  `Kernel.together` elements between them (else on the host): each compilation is paid for by as
  much data. XLA reduces each shard and combines the partial results: nothing is gathered.
- under `jit` (an item with a tracer): items of one shape, dtype and key stacked in the trace by
  `Kernel.stack`, `CHUNK` at a time (a large one alone); their results are tracers, returned as
  they are.

The sum of each array: NumPy's and the small one's on the host (a call a dtype), the large one's
on its device:

>>> import jax, jax.numpy as jnp, numpy as np
>>> sums = Kernel(host=lambda items, arrays: [a.sum() for (a,) in arrays], device=jax.jit(jnp.sum))
>>> items = [np.arange(3.0), jnp.ones(5), jnp.ones(SMALL)]
>>> totals = [0.0] * len(items)
>>> for piece in run(items, sums):
...     rows = [piece.output] if piece.where == "device" else piece.output
...     for item, total in zip(piece.items, rows):
...         totals[item] = float(total)
>>> totals, [piece.where for piece in run(items, sums)]
([3.0, 5.0, 65536.0], ['device', 'host', 'host'])

A verb's kernel adds `stack` (`stats`: many small moments at once, and everything under `jit`),
`arrays` and `key` (`diff`: an item is a pair of leaves, and how many values make one element),
`together` (`diff`: compile for a shape only where it holds enough data).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import jax
import numpy as np

SMALL = 1 << 16
"""Items with fewer elements are computed on the host (or stacked); larger ones where they live."""
STACKED = 64
"""Small items of one shape, dtype and device, this many or more, may be stacked on it."""
CHUNK = 256
"""The most items stacked in one call."""
HOST_BYTES = 1 << 27
"""The most bytes of item data fetched to the host at once."""
HOST_ELEMENTS = 1 << 22
"""The most elements (of the first part) given to one call of `Kernel.host`."""

Item = TypeVar("Item")
Where = Literal["host", "stacked", "device", "traced"]


@dataclass(frozen=True)
class Kernel(Generic[Item]):
    """What a verb computes of each item, on the host and on a device."""

    host: Callable[[list[Item], list[tuple[np.ndarray, ...]]], Any]
    """Items and their arrays as NumPy arrays (of one dtype each part, one key) to results with a
    row an item."""
    device: Callable[[Item], Any]
    """An item's result computed where its arrays live (jitted calls): arrays, fetched with the
    other results."""
    arrays: Callable[[Item], tuple[Any, ...]] | None = None
    """The arrays of an item, all of one shape (`(a, b)`: two leaves compared), or None: an item
    is one array."""
    stack: Callable[[list[Item]], Any] | None = None
    """Many items of one shape, dtypes and device to results with a row an item (at least), or
    None: no item is stacked, and no item may be traced."""
    stackable: Callable[[Item], bool] = lambda item: True
    """Whether concrete items like this one are stacked (they all are under `jit`)."""
    key: Callable[[Item], Hashable] | None = None
    """What else than shapes, dtypes and placements tells items of one kernel call apart."""
    together: int = 0
    """The elements that large items of one shape, dtypes, placement and key must hold together
    to be computed on their devices."""


class Piece(NamedTuple):
    """Results of `items` (positions in the items given to `run`), computed `where`:
    host: `Kernel.host`'s, a row an item; stacked: `Kernel.stack`'s, fetched, a row an item;
    device: `Kernel.device`'s of the one item, fetched; traced: `Kernel.stack`'s, tracers."""

    where: Where
    items: list[int]
    output: Any


def run(items: Sequence[Item], kernel: Kernel[Item]) -> list[Piece]:
    """Each item computed by `kernel` (see the module's docstring), in pieces. An item without
    elements is in no piece: its result is the verb's neutral one."""
    host: list[int] = []
    device: list[int] = []
    large: dict[Hashable, list[int]] = {}
    small: dict[Hashable, list[int]] = {}
    traced: dict[Hashable, list[int]] = {}
    everything_here = jax.process_count() == 1
    arrays_of, key_of, stacks = kernel.arrays, kernel.key, kernel.stack is not None
    array, tracer = jax.Array, jax.core.Tracer
    for position, item in enumerate(items):
        parts = (item,) if arrays_of is None else arrays_of(item)
        first = parts[0]
        size = first.size
        if not size:
            continue
        if len(parts) == 1:
            placed = isinstance(first, array)
            in_trace = placed and isinstance(first, tracer)
        else:
            placed = all(isinstance(part, array) for part in parts)
            in_trace = any(isinstance(part, tracer) for part in parts)
        if not placed and not in_trace:
            host.append(position)
            continue
        key = None if key_of is None else key_of(item)
        if in_trace:
            big = position if size >= SMALL else None
            traced.setdefault((first.shape, *(p.dtype for p in parts), key, big), []).append(position)
            continue
        if len(parts) == 1:
            signature: Hashable = (first.shape, first.dtype, first.sharding, key)
        else:
            signature = (first.shape, *(p.dtype for p in parts), *(p.sharding for p in parts), key)
        if not (everything_here or all(part.is_fully_addressable for part in parts)):
            device.append(position)  # another process holds part of it: only a compiled function sees it all
        elif size >= SMALL:
            large.setdefault(signature, []).append(position)
        elif stacks:
            small.setdefault(signature, []).append(position)
        else:
            host.append(position)
    for members in large.values():  # of one shape
        size = _parts(kernel, items[members[0]])[0].size
        (device if len(members) * size >= kernel.together else host).extend(members)
    chunks: list[list[int]] = []
    for members in small.values():
        parts = _parts(kernel, items[members[0]])
        one_device = all(len(part.sharding.device_set) == 1 for part in parts)
        if len(members) >= STACKED and one_device and kernel.stackable(items[members[0]]):
            chunks.extend(members[start : start + CHUNK] for start in range(0, len(members), CHUNK))
        else:
            host.extend(members)
    return _computed(items, kernel, host, device, chunks, list(traced.values()))


def _parts(kernel: Kernel[Item], item: Item) -> tuple[Any, ...]:
    return (item,) if kernel.arrays is None else kernel.arrays(item)


def _computed(
    items: Sequence[Item],
    kernel: Kernel[Item],
    host: list[int],
    device: list[int],
    chunks: list[list[int]],
    traced: list[list[int]],
) -> list[Piece]:
    """The pieces: device work dispatched first, then its results and the first host batch fetched
    in one transfer while the host computes nothing yet, then each host batch."""
    pieces: list[Piece] = []
    for members in traced:
        assert kernel.stack is not None
        for start in range(0, len(members), CHUNK):
            chunk = members[start : start + CHUNK]
            pieces.append(Piece("traced", chunk, kernel.stack([items[p] for p in chunk])))
    with jax.ensure_compile_time_eval():  # concrete arrays closed over by a traced function too
        outputs = [kernel.device(items[p]) for p in device]
        for chunk in chunks:
            size = min(CHUNK, max(STACKED, 1 << (len(chunk) - 1).bit_length()))
            padded = chunk + [chunk[0]] * (size - len(chunk))
            assert kernel.stack is not None
            outputs.append(kernel.stack([items[p] for p in padded]))
    host_parts = [_parts(kernel, items[p]) for p in host]
    batches = _runs([sum(array.nbytes for array in parts) for parts in host_parts], HOST_BYTES)
    first = batches[0] if batches else range(0)
    results, fetched = jax.device_get((_local(outputs), host_parts[first.start : first.stop]))
    for position, output in zip(device, results[: len(device)], strict=True):
        pieces.append(Piece("device", [position], output))
    for chunk, output in zip(chunks, results[len(device) :], strict=True):
        pieces.append(Piece("stacked", chunk, [x[: len(chunk)] for x in output]))
    for number, batch in enumerate(batches):
        if number:
            fetched = jax.device_get(host_parts[batch.start : batch.stop])
        pieces.extend(_host_pieces(items, kernel, host[batch.start : batch.stop], fetched))
    return pieces


def _runs(sizes: list[int], limit: int) -> list[range]:
    """Consecutive runs of items of at most `limit` in all (an item alone where it is larger)."""
    starts: list[int] = []
    total = limit
    for position, size in enumerate(sizes):
        if total + size > limit:
            starts.append(position)
            total = 0
        total += size
    stops = [*starts[1:], len(sizes)] if starts else []
    return [range(start, stop) for start, stop in zip(starts, stops, strict=True)]


def _host_pieces(
    items: Sequence[Item], kernel: Kernel[Item], batch: list[int], fetched: list[tuple[Any, ...]]
) -> list[Piece]:
    """A fetched batch given to `Kernel.host`, grouped by dtypes and key, `HOST_ELEMENTS` at most
    a call (an item alone where it holds more)."""
    groups: dict[Hashable, list[tuple[int, tuple[np.ndarray, ...]]]] = {}
    key_of = kernel.key
    for position, parts in zip(batch, fetched, strict=True):
        arrays = tuple(map(np.asarray, parts))
        key = None if key_of is None else key_of(items[position])
        groups.setdefault((*(a.dtype for a in arrays), key), []).append((position, arrays))
    pieces = []
    for members in groups.values():
        for part in _runs([arrays[0].size for _, arrays in members], HOST_ELEMENTS):
            positions = [position for position, _ in members[part.start : part.stop]]
            output = kernel.host(
                [items[p] for p in positions], [a for _, a in members[part.start : part.stop]]
            )
            pieces.append(Piece("host", positions, output))
    return pieces


def _local(outputs: list[Any]) -> list[Any]:
    """Device results to fetch: one not fully addressable (a replicated result of arrays of several
    processes) from this process's own copy."""
    return jax.tree.map(
        lambda x: x if not isinstance(x, jax.Array) or x.is_fully_addressable else x.addressable_data(0),
        outputs,
    )
