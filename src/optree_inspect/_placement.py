"""Where a leaf lives: its devices, the bytes it takes on each, and its placement in words.

Read from the sharding alone, never from array data, so that a live array, a `jax.ShapeDtypeStruct`
that carries a sharding (a what-if before allocating) and a checkpoint's metadata give the same
figures. A sharding over an `AbstractMesh` (a checkpoint read without the devices it was saved on,
a `SavedStruct`) names its devices by the ids saved with it. Bytes in `pinned_host` memory (the
memory kind JAX offloads to) are on no device.

>>> import jax, jax.numpy as jnp
>>> placement_text(jnp.zeros(3)), device_bytes(jnp.zeros((2, 3)))
('on device 0 only', ((0, 24),))
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import numpy as np

from ._cache import on_clear
from ._compat import partition_spec_text
from ._errors import bounded
from ._leaf import is_concrete_array_type, is_deleted, is_placed, sharding_of, unwrap


def device_count(sharding: Any) -> int:
    """How many devices `sharding` spans (an `AbstractMesh`'s too, which has no `device_set`)."""
    return int(sharding.num_devices)


def is_abstract_mesh(sharding: Any) -> bool:
    """A `NamedSharding` over an `AbstractMesh`: a mesh's shape and axis names without devices."""
    return isinstance(getattr(sharding, "mesh", None), jax.sharding.AbstractMesh)


def itemsize(dtype: Any) -> int:
    """Bytes an element takes, a PRNG key's included (`jax.random.key`'s dtype has its size); 0
    for what is no dtype."""
    try:
        return int(dtype.itemsize)
    except (AttributeError, TypeError, ValueError):
        return 0


class SavedStruct(jax.ShapeDtypeStruct):
    """A `jax.ShapeDtypeStruct` read from a checkpoint saved on devices this process lacks: its
    sharding is over an `AbstractMesh` of the saved mesh's shape, and `device_ids` are the saved
    devices' ids in the mesh's order."""

    __slots__ = ("device_ids",)

    def __init__(self, shape: Any, dtype: Any, *, sharding: Any, device_ids: tuple[int, ...]) -> None:
        super().__init__(shape, dtype, sharding=sharding)
        self.device_ids = device_ids


def device_bytes(leaf: Any) -> tuple[tuple[int, int], ...] | None:
    """`(device, bytes)` for each device the placed leaf has data on, by device id, or None for a
    leaf on no device: a host array, a Python number, an abstract leaf without a sharding, a
    tracer, a deleted array, an array offloaded to `pinned_host` memory, or a sharding whose split
    is not known (`P.UNCONSTRAINED`). Exact to the byte: a live array's figures equal the sum of
    `shard.data.nbytes` over its shards.

    >>> import jax.numpy as jnp
    >>> device_bytes(jax.ShapeDtypeStruct((4,), jnp.float32)) is None  # no sharding: no device
    True
    """
    leaf = unwrap(leaf)
    if not is_placed(leaf) or is_deleted(leaf):
        return None
    sharding = sharding_of(leaf)
    if sharding is None or getattr(sharding, "memory_kind", None) == OFFLOADED:
        return None
    try:
        size = itemsize(leaf.dtype)
        return _bytes_by_device(tuple(leaf.shape), size, sharding, getattr(leaf, "device_ids", None))
    except Exception:  # a sharding JAX cannot split this shape by (it would refuse the array too)
        return None


OFFLOADED = "pinned_host"
"""The memory kind JAX offloads arrays to: host memory, not the device's."""


@functools.lru_cache(maxsize=65536)
def _bytes_by_device(
    shape: tuple[int, ...], size: int, sharding: Any, device_ids: tuple[int, ...] | None
) -> tuple[tuple[int, int], ...] | None:
    if is_abstract_mesh(sharding):
        return _abstract_bytes(shape, size, sharding, device_ids)
    found: dict[int, int] = {}
    for device, index in sharding.devices_indices_map(shape).items():
        count = math.prod(
            len(range(*part.indices(length))) for part, length in zip(index, shape, strict=True)
        )
        found[device.id] = found.get(device.id, 0) + count * size
    return tuple(sorted(found.items()))


on_clear(_bytes_by_device.cache_clear)


def _abstract_bytes(
    shape: tuple[int, ...], size: int, sharding: Any, device_ids: tuple[int, ...] | None
) -> tuple[tuple[int, int], ...] | None:
    """Per mesh position (or the saved device at it), as JAX splits a dimension over mesh axes:
    chunks of the dimension divided by the axes' product, rounded up, the last ones shorter (or
    empty); None for a spec entry that leaves the split to the compiler."""
    mesh = sharding.mesh
    axis_sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    if not all(axes is None or isinstance(axes, str | tuple) for axes in spec):
        return None
    found: dict[int, int] = {}
    for position, coordinates in enumerate(itertools.product(*map(range, mesh.axis_sizes))):
        where = dict(zip(mesh.axis_names, coordinates, strict=True))
        count = 1
        for length, axes in zip(shape, spec, strict=True):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            parts = math.prod(axis_sizes[name] for name in names)
            chunk = -(-length // parts) if parts else length
            shard = 0
            for name in names:  # the shard's number along this dimension, major axis first
                shard = shard * axis_sizes[name] + where[name]
            count *= max(0, min(chunk, length - shard * chunk))
        device = device_ids[position] if device_ids is not None and position < len(device_ids) else position
        found[device] = found.get(device, 0) + count * size
    return tuple(sorted(found.items()))


class Placements(NamedTuple):
    """Where many leaves live, each leaf a row of a table of distinct placements: `rows[i]` is
    leaf i's entry in `device_bytes` (None: on no device) and `logical_bytes` (its own size)."""

    rows: np.ndarray
    device_bytes: list[tuple[tuple[int, int], ...] | None]
    logical_bytes: list[int]


def placements(values: list[Any]) -> Placements:
    """`device_bytes` and the logical bytes of each of `values` (nnx Variables unwrapped), in one
    pass that computes each distinct (type, shape, dtype, sharding) once.

    >>> import jax.numpy as jnp
    >>> table = placements([jnp.zeros(2), jnp.ones(2), 3])
    >>> table.rows.tolist(), table.device_bytes, table.logical_bytes
    ([0, 0, 1], [((0, 8),), None], [8, 0])
    """
    rows: list[int] = []
    seen: dict[Any, int] = {}
    found: list[tuple[tuple[int, int], ...] | None] = []
    logical: list[int] = []
    natures, add = _NATURES, rows.append
    for value in values:
        kind = type(value)
        nature = natures.get(kind) or _nature(kind)
        if nature == "array":
            # an array's sharding lives as long as the array, so its id is a key (cheaper than a hash)
            key: tuple[Any, ...] = (value.shape, value.dtype, id(value.sharding), value.is_deleted())
        elif nature == "struct":
            # a bare PartitionSpec makes a new sharding at each read: keyed by value, not by id
            key = (value.shape, value.dtype, sharding_of(value), False, getattr(value, "device_ids", None))
        elif hasattr(value, "shape") and hasattr(value, "dtype"):  # a tracer, a NumPy array
            key = (tuple(value.shape), value.dtype, None, True)
        else:
            key = (kind,)
        number = seen.get(key)
        if number is None:
            number = seen[key] = len(found)
            on_device = len(key) >= 4 and not key[3]
            found.append(device_bytes(value) if on_device else None)
            logical.append(math.prod(key[0]) * itemsize(key[1]) if len(key) >= 4 else 0)
        add(number)
    return Placements(np.array(rows, dtype=np.intp), found, logical)


def widest(values: list[Any]) -> int:
    """The most devices any of `values` has bytes on (0 where none is placed; deleted and
    offloaded arrays have none), each distinct sharding asked once; in a process with one
    device and no `ShapeDtypeStruct`, no sharding is read.

    >>> import jax.numpy as jnp
    >>> widest([jnp.zeros(2), 3, None])
    1
    """
    natures = {_nature(kind) for kind in set(map(type, values))}
    if "struct" not in natures and jax.device_count() == 1:
        return int("array" in natures)
    shardings = {}
    for value in values:
        nature = _nature(type(value))
        if nature == "array" and not value.is_deleted():
            shardings[id(value.sharding)] = value.sharding  # arrays often share one
        elif nature == "struct":
            sharding = sharding_of(value)
            shardings[id(sharding)] = sharding
    found = [s for s in shardings.values() if s is not None and getattr(s, "memory_kind", None) != OFFLOADED]
    return max(map(device_count, found), default=0)


def _nature(kind: type) -> str:
    """`array` for a concrete `jax.Array` type, `struct` for `jax.ShapeDtypeStruct`, else `other`."""
    nature = _NATURES.get(kind)
    if nature is None:
        if issubclass(kind, jax.ShapeDtypeStruct):
            nature = "struct"
        else:
            nature = "array" if is_concrete_array_type(kind) else "other"
        _NATURES[kind] = nature
    return nature


_NATURES: dict[type, str] = {}


def devices_text(devices: tuple[int, ...] | list[int]) -> str:
    """`device 3`, `devices 0-7`, `devices 0, 2, 5`."""
    devices = sorted(devices)
    if len(devices) == 1:
        return f"device {devices[0]}"
    if devices == list(range(devices[0], devices[-1] + 1)):
        return f"devices {devices[0]}-{devices[-1]}"
    shown = ", ".join(map(str, devices[:8]))
    return f"devices {shown}{', ...' if len(devices) > 8 else ''}"


def placement_text(leaf: Any) -> str:
    """A placed leaf's placement in words: `on device 0 only`, `replicated over 8 devices`,
    `P('data', 'model') over 8 devices`."""
    leaf = unwrap(leaf)
    sharding = sharding_of(leaf)
    if sharding is None:
        return "on no device"
    memory = " in pinned_host memory" if getattr(sharding, "memory_kind", None) == OFFLOADED else ""
    count = device_count(sharding)
    if count == 1:
        found = device_bytes(leaf) or _bytes_by_device((), 0, sharding, getattr(leaf, "device_ids", None))
        return f"on device {found[0][0]} only{memory}" if found else f"on one device{memory}"
    if sharding.is_fully_replicated:
        return f"replicated over {count} devices{memory}"
    spec = getattr(sharding, "spec", None)
    shown = partition_spec_text(spec) if spec is not None else str(sharding)
    return f"{bounded(shown, 80)} over {count} devices{memory}"
