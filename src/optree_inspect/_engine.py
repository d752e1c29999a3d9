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
- on their devices: larger items, one `Kernel.device` call each (or one `Kernel.group` call for
  up to `GROUP` of one shape, dtypes and placement), where the large items of one shape, dtypes
  and placement hold at least `Kernel.together` elements between them (else on the host): each
  compilation is paid for by as much data.
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

Arrays on several devices are computed shard by shard (`split`, then `combined`): each process
computes the distinct shards it holds (replica 0 of each), as one-device items of the kind above,
and, in a multi-process run, the shards' results are exchanged in one collective that every process
makes, whatever the values; each item's result is then merged from its shards' in the order of
their indices, the same on every process. Nothing is gathered and no compiled program holds a
collective, so no number of leaves can leave the devices' threads waiting on one another; a
replicated array is read from this process's own copy.

A verb's kernel adds `stack` (`stats`: many small moments at once, and everything under `jit`),
`arrays` and `key` (`diff`: an item is a pair of leaves, and how many values make one element),
`together` (`diff`: compile for a shape only where it holds enough data).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import jax
import numpy as np

from ._errors import InvalidArgumentError

SMALL = 1 << 16
"""Items with fewer elements are computed on the host (or stacked); larger ones where they live."""
GROUP = 8
"""The most large items given to one `Kernel.group` call, in groups of powers of two (so that a
shape is compiled for a few group sizes at most)."""
STACKED = 64
"""Small items of one shape, dtype and device, this many or more, may be stacked on it."""
CHUNK = 256
"""The most items stacked in one call."""
HOST_BYTES = 1 << 27
"""The most bytes of item data fetched to the host at once."""
HOST_ELEMENTS = 1 << 22
"""The most elements (of the first part) given to one call of `Kernel.host`."""

Item = TypeVar("Item")
Result = TypeVar("Result")
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
    group: Callable[[list[Item]], Any] | None = None
    """Several large items of one shape, dtypes, placement and key to `Kernel.device`'s results,
    each stacked along a first axis of one row an item, in one call (one dispatch and one transfer
    a group: on a GPU each costs about what reading 1 GB does), or to None where it takes no such
    group; None: each item is computed alone."""


class Piece(NamedTuple):
    """Results of `items` (positions in the items given to `run`), computed `where`:
    host: `Kernel.host`'s, a row an item; stacked: `Kernel.stack`'s, fetched, a row an item;
    device: `Kernel.device`'s of the one item, fetched; traced: `Kernel.stack`'s, tracers."""

    where: Where
    items: list[int]
    output: Any


def run(items: Sequence[Item], kernel: Kernel[Item]) -> list[Piece]:
    """Each item computed by `kernel` (see the module's docstring), in pieces. An item without
    elements is in no piece: its result is the verb's neutral one. Every array of the items is
    held whole by this process (`split` first where one may not be)."""
    host: list[int] = []
    device: list[list[int]] = []
    large: dict[Hashable, list[int]] = {}
    small: dict[Hashable, list[int]] = {}
    traced: dict[Hashable, list[int]] = {}
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
        elif len(parts) == 2:  # a pair (`diff`), the most items a call
            second = parts[1]
            placed = isinstance(first, array) and isinstance(second, array)
            in_trace = isinstance(first, tracer) or isinstance(second, tracer)
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
        elif len(parts) == 2:
            signature = (first.shape, first.dtype, second.dtype, first.sharding, second.sharding, key)
        else:
            signature = (first.shape, *(p.dtype for p in parts), *(p.sharding for p in parts), key)
        if size >= SMALL:
            large.setdefault(signature, []).append(position)
        elif stacks:
            small.setdefault(signature, []).append(position)
        else:
            host.append(position)
    for members in large.values():  # of one shape
        size = _parts(kernel, items[members[0]])[0].size
        if len(members) * size < kernel.together:
            host.extend(members)
        elif kernel.group is None:
            device.extend([member] for member in members)
        else:
            device.extend(_groups(members))
    chunks: list[list[int]] = []
    for members in small.values():
        parts = _parts(kernel, items[members[0]])
        one_device = all(len(part.sharding.device_set) == 1 for part in parts)
        if len(members) >= STACKED and one_device and kernel.stackable(items[members[0]]):
            chunks.extend(members[start : start + CHUNK] for start in range(0, len(members), CHUNK))
        else:
            host.extend(members)
    return _computed(items, kernel, host, device, chunks, list(traced.values()))


def _groups(members: list[int]) -> list[list[int]]:
    """`members` in groups of `GROUP`, then of the powers of two that make up the rest."""
    groups, start = [], 0
    while start < len(members):
        size = min(GROUP, 1 << ((len(members) - start).bit_length() - 1))
        groups.append(members[start : start + size])
        start += size
    return groups


def _parts(kernel: Kernel[Item], item: Item) -> tuple[Any, ...]:
    return (item,) if kernel.arrays is None else kernel.arrays(item)


def _computed(
    items: Sequence[Item],
    kernel: Kernel[Item],
    host: list[int],
    device: list[list[int]],
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
        computed: list[tuple[list[int], bool]] = []  # the items of each output; stacked or not
        outputs: list[Any] = []
        for group in device:
            stacked = (
                None if kernel.group is None or len(group) == 1 else kernel.group([items[p] for p in group])
            )
            if stacked is None:
                computed.extend(([p], False) for p in group)
                outputs.extend(kernel.device(items[p]) for p in group)
            else:
                computed.append((group, True))
                outputs.append(stacked)
        for chunk in chunks:
            size = min(CHUNK, max(STACKED, 1 << (len(chunk) - 1).bit_length()))
            padded = chunk + [chunk[0]] * (size - len(chunk))
            assert kernel.stack is not None
            outputs.append(kernel.stack([items[p] for p in padded]))
    host_parts = [_parts(kernel, items[p]) for p in host]
    batches = _runs([sum(array.nbytes for array in parts) for parts in host_parts], HOST_BYTES)
    first = batches[0] if batches else range(0)
    results, fetched = jax.device_get((outputs, host_parts[first.start : first.stop]))
    for (group, stacked), output in zip(computed, results[: len(computed)], strict=True):
        if not stacked:
            pieces.append(Piece("device", group, output))
        else:
            pieces.extend(
                Piece("device", [p], jax.tree.map(lambda x, k=k: x[k], output)) for k, p in enumerate(group)
            )
    for chunk, output in zip(chunks, results[len(computed) :], strict=True):
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


@dataclass(frozen=True)
class Split(Generic[Item]):
    """Items as this process computes them (`split`): `items[j]` is (a shard of) the given item
    `owner[j]`, at `index[j]` (None: the whole item); `spread` tells whether any given item was
    split into shards, `shared` which given items this process does not hold whole (it gets their
    results from the others), `exchanged` whether the processes of a multi-process run exchange
    results (whenever the items hold a concrete `jax.Array`: the same on every process)."""

    items: list[Item]
    owner: list[int]
    index: list[tuple[tuple[int, int], ...] | None]
    count: int
    spread: bool
    shared: frozenset[int]
    exchanged: bool


def split(
    items: Sequence[Item],
    arrays: Callable[[Item], tuple[Any, ...]],
    rebuild: Callable[[Item, tuple[Any, ...]], Item],
) -> Split[Item]:
    """`items` with each concrete array of several devices that this process does not hold whole,
    or holds on several devices, replaced: a replicated one by this process's own copy; another by
    the distinct shards this process holds (one item a shard; all of an item's arrays resharded like
    its first, so that their shards pair up). `arrays` gives an item's arrays, `rebuild` the item
    with others in their place."""
    computed: list[Item] = []
    owner: list[int] = []
    index: list[tuple[tuple[int, int], ...] | None] = []
    spread = placed = False
    shared: set[int] = set()
    alone = jax.process_count() == 1
    for position, item in enumerate(items):
        parts = arrays(item)
        first = parts[0]
        size = first.size if isinstance(first, _SIZED) else np.size(first)
        if alone and size < SMALL:  # `_how`'s "whole", without reading shardings
            computed.append(item)
            owner.append(position)
            index.append(None)
            continue
        placed = placed or any(isinstance(p, jax.Array) and not isinstance(p, jax.core.Tracer) for p in parts)
        how = _how(parts)
        if how == "whole":
            computed.append(item)
            owner.append(position)
            index.append(None)
            continue
        if how == "own copy":
            computed.append(rebuild(item, tuple(part.addressable_data(0) for part in parts)))
            owner.append(position)
            index.append(None)
            continue
        spread = True
        if how == "shards":
            shared.add(position)
        if how == "shards":  # placed like the first array of several processes
            sharding = next(
                p for p in parts if isinstance(p, jax.Array) and not p.is_fully_addressable
            ).sharding
        else:  # like the one on most devices
            sharding = max(parts, key=lambda p: len(p.sharding.device_set)).sharding
        aligned = [_resharded(part, sharding) for part in parts]
        by_device = [{shard.device: shard for shard in part.addressable_shards} for part in aligned]
        for shard in aligned[0].addressable_shards:
            if shard.replica_id:
                continue
            shards = tuple(by_device[k][shard.device].data for k in range(len(aligned)))
            computed.append(rebuild(item, shards))
            owner.append(position)
            index.append(tuple((s.start or 0, -1 if s.stop is None else s.stop) for s in shard.index))
    exchanged = placed and jax.process_count() > 1
    return Split(computed, owner, index, len(items), spread, frozenset(shared), exchanged)


_SIZED = (jax.Array, np.ndarray)
"""Values whose `size` is an attribute (`np.size` reads it through a Python function)."""


def _how(parts: tuple[Any, ...]) -> Literal["whole", "own copy", "shards", "shards here"]:
    """How an item is computed: whole (no concrete array in it, or all held whole here and small or
    on one device), from this process's own copy (replicated on devices of every process), or
    shard by shard ("shards here": all its arrays held whole here). Decided from shapes and
    shardings only: the same on every process."""
    arrays = []
    for part in parts:
        if isinstance(part, jax.core.Tracer) or not np.size(part):
            return "whole"
        if isinstance(part, jax.Array):
            arrays.append(part)
    if not arrays:
        return "whole"
    if all(part.is_fully_addressable for part in arrays):
        several = np.size(parts[0]) >= SMALL and len(arrays) == len(parts)
        return "shards here" if several and any(len(p.sharding.device_set) > 1 for p in arrays) else "whole"
    everyone = set(range(jax.process_count()))
    if len(arrays) == len(parts) and all(
        part.is_fully_replicated and _processes(part.sharding) == everyone for part in arrays
    ):
        return "own copy"
    if len({frozenset(part.sharding.device_set) for part in arrays}) > 1:
        raise InvalidArgumentError(
            f"Two values of shape {tuple(arrays[0].shape)} lie on different sets of devices, of several "
            "processes: JAX cannot move one onto the other's devices there, so they cannot be compared. "
            "Place both on one set of devices first (jax.device_put(b, a.sharding) where a and b "
            "share their devices, or restore b with a's shardings)."
        )
    return "shards"


def _processes(sharding: jax.sharding.Sharding) -> set[int]:
    return {device.process_index for device in sharding.device_set}  # type: ignore[attr-defined]


def _resharded(part: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """`part` placed on `sharding`: a host value by each process placing its own shards (no
    comparison between processes), an array moved by JAX where it is placed otherwise."""
    if not isinstance(part, jax.Array):
        host = np.asarray(part)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    if part.sharding.is_equivalent_to(sharding, part.ndim):
        return part
    return jax.device_put(part, sharding)


def combined(
    parts: Split[Item], results: Sequence[Result], merge: Callable[[list[Result]], Result]
) -> list[Result | None]:
    """The result of each given item (None for one without a computed item): its own, or its
    shards' merged by `merge` in the order of their indices. In a multi-process run
    (`Split.exchanged`) every process makes one exchange of the shards' results, and a second
    where some process holds no shard of an item that others hold whole (an array on the devices
    of some processes only); both depend on shardings only, never on values."""
    found: list[Result | None] = [None] * parts.count
    shards: dict[int, dict[tuple[tuple[int, int], ...], Result]] = {}
    for owner, index, result in zip(parts.owner, parts.index, results, strict=True):
        if index is None:
            found[owner] = result
        else:
            shards.setdefault(owner, {})[index] = result
    wanted: list[int] = []
    if parts.exchanged:  # shards' results, and which items a process holds no shard of
        missing = sorted(owner for owner in parts.shared if not shards.get(owner))
        mine = {owner: shards.get(owner, {}) for owner in parts.shared}
        gathered = every_process((mine, missing))
        for theirs, _ in gathered:
            for owner, results_of in theirs.items():
                shards.setdefault(owner, {}).update(results_of)
        wanted = sorted({owner for _, missing_there in gathered for owner in missing_there})
    for owner, results_of in shards.items():
        if results_of:
            found[owner] = merge([results_of[index] for index in sorted(results_of)])
    if wanted:  # items on the devices of some processes only: from those that hold them whole
        offered = {owner: found[owner] for owner in wanted if owner not in parts.shared}
        for theirs in every_process(offered):
            for owner, result in theirs.items():
                if found[owner] is None:
                    found[owner] = result
    return found


def every_process(value: Any) -> list[Any]:
    """`value` of every process, in process order: one exchange of its pickled bytes (their
    lengths first), which every process must make."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(value), dtype=np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    everything = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(row[:length].tobytes()) for row, length in zip(everything, lengths, strict=True)]
