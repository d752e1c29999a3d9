"""When did it go wrong: `first_bad`, the first step of a `CheckpointManager` directory whose saved
state holds NaN or Inf, found by bisection, each array read in slices of bounded size
(docs/first-bad.md). tensorstore and orbax-checkpoint are imported only on use.

```python
found = oi.first_bad("/runs/exp7")  # FirstBad(step=40, steps_read=[63, 31, 47, 39, 43, 41, 40])
print(found.report)  # nonfinite: mu.w: 1 NaN in 16 elements (f32[4,4])
```
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import pathlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from numbers import Integral
from typing import Any, NamedTuple

import jax
import numpy as np

from ._cache import index_and_leaves
from ._check import Finding, Report
from ._checkpoint import (
    _STEP_NAME,
    _absolute,
    _collect_quietly,
    _damaged,
    _insert,
    _orbax,
    _read_item,
    _reason,
    _saved_leaves,
    checkpoint_items,
)
from ._errors import CheckpointError, InvalidArgumentError, bounded, raised_here, short_repr
from ._leaf import dtype_name
from ._naming import shortest_query

CHUNK_BYTES = 64 * 2**20
"""The default bound on one read of array data, and on the reads in flight together."""
_DELAY = 1.0
"""Progress shows on a terminal only once the work has taken this many seconds."""


class StepRead(NamedTuple):
    """What reading one step found: its leaves, those holding NaN or Inf and the counts, the
    array reads made (`reads`) with the bytes of the largest (`largest_read`), and whether it was
    read whole (`complete`; bisection reads a bad step other than the first bad one only up to
    its first batch of leaves holding a non-finite value, so its counts are lower bounds)."""

    step: int
    leaves: int
    nonfinite_leaves: int
    nan: int
    inf: int
    reads: int
    largest_read: int
    complete: bool = True

    def line(self) -> str:
        """The step in one line: `step 40: 2 non-finite leaves (32 NaN, 0 Inf)`."""
        if not self.nonfinite_leaves:
            return f"step {self.step}: no NaN or Inf in {self.leaves:,} leaves"
        plural = "ves" if self.nonfinite_leaves != 1 else "f"
        least = "" if self.complete else "at least "
        return (
            f"step {self.step}: {least}{self.nonfinite_leaves:,} non-finite lea{plural} "
            f"({self.nan:,} NaN, {self.inf:,} Inf)"
        )


class FirstBad(NamedTuple):
    """`first_bad`'s answer: the first step holding NaN or Inf (None where none does), the steps
    read in the order read, the `Report` of that step's `nonfinite` findings (empty where none),
    each step read as a `StepRead`, how many steps the directory has, and whether every step was
    read. Print it for the text `optree-inspect check --first-bad` prints."""

    step: int | None
    steps_read: list[int]
    report: Report
    steps: tuple[StepRead, ...]
    total_steps: int
    every_step: bool = False

    def __repr__(self) -> str:
        return f"FirstBad(step={self.step}, steps_read={self.steps_read})"

    def __str__(self) -> str:
        lines = [read.line() for read in self.steps] if self.every_step else []
        if self.step is None:
            last = max(self.steps_read)
            where = "any step" if self.every_step else f"the last step, {last}, so in none before it"
            lines.append(f"No NaN or Inf in {where}.")
        else:
            lines += [f"First bad step: {self.step}", str(self.report)]
        read = len(self.steps_read)
        shown = ", ".join(map(str, self.steps_read[:40])) + (", ..." if read > 40 else "")
        lines.append(f"Steps read: {shown} ({read} of {self.total_steps})")
        return "\n".join(lines)


@raised_here
def first_bad(
    path: str | os.PathLike[str],
    /,
    *,
    every_step: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool | None = None,
) -> FirstBad:
    """The first step of the `CheckpointManager` directory `path` whose saved state holds NaN or
    Inf, by bisection over its steps: on the assumption that a non-finite value, once in an
    optimizer state, stays there, it reads at most ceil(log2 n) + 1 of n steps (the last first).
    `every_step=True` reads every step instead (and the first bad step is then exact whatever the
    run did). A step is bad where any of its items holds a non-finite value; its `report` holds
    one `nonfinite` finding a leaf, as `oi.check` makes them.

    Each floating array is read through tensorstore in slices of at most `chunk_bytes` (64 MB),
    NaN and Inf counted a slice at a time, so host memory stays bounded whatever the checkpoint's
    size (plus one decoded storage chunk where orbax saved chunks larger than the bound); integer
    and bool arrays hold no NaN and are not read. A layout other than orbax's zarr arrays is read
    through orbax, leaves grouped up to `chunk_bytes`. `progress`: None shows progress on stderr
    when it is a terminal and the work takes over a second (tqdm or rich where importable), True
    always, False never. `CheckpointError` where `path` holds no steps or a step is damaged (as
    `load`); `InvalidArgumentError` for a bad argument.

    ```python
    found = oi.first_bad("/runs/exp7")
    found.step, found.steps_read  # (40, [63, 31, 47, 39, 43, 41, 40])
    ```
    """
    _check_arguments(path, every_step, chunk_bytes, progress)
    root, steps = _steps(path)
    planned = len(steps) if every_step else math.ceil(math.log2(len(steps))) + 1
    reads: dict[int, _StepReader] = {}  # in the order read
    first: list[_StepReader] = []  # the earliest bad step read so far
    layouts: dict[bytes, _Layout] = {}

    with _Progress(_shown(progress), planned) as bar:

        def bad(step: int) -> bool:
            reader = reads[step] = _StepReader(root, step, int(chunk_bytes), bar, layouts)
            bar.start_step(reader.tally, len(reads) - 1)
            found = reader.read(until_bad=not every_step)
            if found and (not first or step < first[0].step):
                if first:
                    first[0].release()
                first[:] = [reader]
            return found

        if every_step:
            for step in steps:
                bad(step)
        else:
            _bisect(steps, bad)
        if first:
            bar.start_step(first[0].tally, len(reads))
            first[0].read(until_bad=False)  # the rest of the first bad step, for its report
    report = first[0].report() if first else Report([])
    done = tuple(reader.summary() for reader in reads.values())
    return FirstBad(first[0].step if first else None, list(reads), report, done, len(steps), every_step)


def _check_arguments(path: Any, every_step: Any, chunk_bytes: Any, progress: Any) -> None:
    if not isinstance(path, str | os.PathLike):
        raise InvalidArgumentError(f"first_bad: path must be a str or os.PathLike, not {short_repr(path)}.")
    if not isinstance(every_step, bool):
        raise InvalidArgumentError(f"first_bad: every_step must be a bool, not {short_repr(every_step)}.")
    if not isinstance(chunk_bytes, Integral) or isinstance(chunk_bytes, bool) or chunk_bytes < 1:
        raise InvalidArgumentError(
            f"first_bad: chunk_bytes must be a positive int (bytes), not {short_repr(chunk_bytes)}."
        )
    if progress is not None and not isinstance(progress, bool):
        raise InvalidArgumentError(
            f"first_bad: progress must be None, True or False, not {short_repr(progress)}."
        )


def _bisect(steps: list[int], bad: Callable[[int], bool]) -> None:
    """Read the last step, then, where it is bad, bisect for the first bad one (each read at most
    once: ceil(log2 n) + 1 reads at most).

    >>> read = []
    >>> _bisect(list(range(64)), lambda s: read.append(s) or s >= 40)
    >>> read, len(read) <= math.ceil(math.log2(64)) + 1
    ([63, 31, 47, 39, 43, 41, 40], True)
    """
    if not bad(steps[-1]):
        return
    low, high = 0, len(steps) - 1  # invariant: steps[high] is bad, every step before low is not
    while low < high:
        middle = (low + high) // 2
        if bad(steps[middle]):
            high = middle
        else:
            low = middle + 1


def _steps(path: str | os.PathLike[str]) -> tuple[pathlib.Path, list[int]]:
    """The directory and its steps, in order, as `load` names them (`step_prefix`, zero-padding)."""
    root = _absolute(path)
    shown = bounded(str(path), 300)
    try:
        if not root.is_dir():
            raise CheckpointError(f"No checkpoint at {shown}: not a directory.")
        if (root / "_METADATA").exists():
            raise CheckpointError(
                f"{shown} is one saved item, with no steps; first_bad reads a CheckpointManager directory."
            )
        steps = set()
        for child in root.iterdir():
            match = _STEP_NAME.fullmatch(child.name)
            if match and child.is_dir() and not (child / "_METADATA").exists():
                steps.add(int(match[1]))
    except OSError as error:
        raise CheckpointError(f"Cannot read {shown}: {_reason(error)}.") from None
    if not steps:
        raise CheckpointError(
            f"{shown} holds no steps; first_bad reads a CheckpointManager directory (a directory a step)."
        )
    return root, sorted(steps)


_BATCH = 2048
"""Leaves opened and read together; bisection stops reading a bad step after the first batch
holding a non-finite value."""


class _Tally:
    """The reads made for one step: how many, the largest, and the leaves and bytes read so far
    (shown on `bar`)."""

    def __init__(self, step: int, bar: _Progress) -> None:
        self.step, self.bar = step, bar
        self.reads = self.largest = self.leaves = self.leaves_read = self.bytes_read = 0

    def add(self, nbytes: int) -> None:
        self.reads += 1
        self.largest = max(self.largest, nbytes)

    def advance(self, nbytes: int, leaves: int = 0) -> None:
        self.bytes_read += nbytes
        self.leaves_read += leaves
        self.bar.show()


class _StepReader:
    """One step, read a batch of leaves at a time: each item's counts of NaN and Inf a leaf."""

    def __init__(
        self, root: pathlib.Path, step: int, bound: int, bar: _Progress, layouts: dict[bytes, _Layout]
    ) -> None:
        items = checkpoint_items(root, step)
        self.step = step
        self.tally = _Tally(step, bar)
        self.names = sorted(items)  # the order of a dict's leaves
        self.items = [_ItemReader(items[name], bound, self.tally, layouts) for name in self.names]
        self.batches: Iterator[None] = itertools.chain.from_iterable(item.batches() for item in self.items)
        self.complete = False
        self.tally.leaves = sum(item.expected for item in self.items)

    def bad(self) -> bool:
        return any(item.counts.any() for item in self.items)

    def read(self, until_bad: bool) -> bool:
        """Read on, to the end or (`until_bad`) to the first batch holding NaN or Inf; bad or not."""
        for _ in self.batches:
            if until_bad and self.bad():
                return True
        self.complete = True
        return self.bad()

    def release(self) -> None:
        """Read no further: let go of the arrays opened."""
        self.batches = iter(())

    def summary(self) -> StepRead:
        table = np.concatenate([item.counts for item in self.items])
        nan, inf = (int(n) for n in table.sum(axis=0))
        bad = int(table.any(axis=1).sum())
        return StepRead(
            self.step, len(table), bad, nan, inf, self.tally.reads, self.tally.largest, self.complete
        )

    def report(self) -> Report:
        """A `nonfinite` finding for each leaf holding NaN or Inf, as `check` words them."""
        trees = [item.tree() for item in self.items]
        tree = trees[0] if len(trees) == 1 else dict(zip(self.names, trees, strict=True))
        counts = np.concatenate([item.counts for item in self.items])
        index, leaves = index_and_leaves(tree)
        findings = []
        for position in np.flatnonzero(counts.any(axis=1)).tolist():
            nan, inf = (int(n) for n in counts[position])
            leaf = leaves[position]
            what = " and ".join(f"{n:,} {name}" for n, name in ((nan, "NaN"), (inf, "Inf")) if n)
            size = math.prod(leaf.shape)
            kind = f"{dtype_name(leaf.dtype)}[{','.join(map(str, leaf.shape))}]"
            message = f"{what} in {size:,} element{'s' * (size != 1)} ({kind})"
            node = index.leaf_nodes[position]
            findings.append(Finding("nonfinite", index.path(node), shortest_query(index, node), message))
        return Report(findings)


class _OtherLayout(Exception):
    """An item not saved as orbax's zarr arrays: orbax reads it."""


_EMPTY: dict[str, Callable[[], Any]] = {"Dict": dict, "List": list, "Tuple": list}
"""What orbax restores for an empty container it saved (any other skipped value: None)."""


_ZARR = {"driver": "zarr", "recheck_cached_data": "open", "fill_missing_data_reads": False}
"""How an array is opened: its metadata read once, a chunk missing an error (damage), not zeros."""


class _Layout(NamedTuple):
    """An item's tree as its `_METADATA` records it: the tree with each array's number as its
    leaf, each array's name, the numbers in leaf order, and whether it was saved in OCDBT."""

    structure: Any
    names: list[str]
    order: list[int]
    use_ocdbt: bool


def _layout(text: bytes) -> _Layout:
    """The layout an item's `_METADATA` records (`ValueError`, `KeyError`, ... where it is none)."""
    document = json.loads(text)
    root: Any = None
    names: list[str] = []
    for entry in document["tree_metadata"].values():
        keys = [(k["key"], k["key_type"]) for k in entry["key_metadata"]]
        value = entry["value_metadata"]
        if value.get("skip_deserialize"):
            root = _insert(root, keys, _EMPTY.get(value["value_type"], lambda: None)())
        else:
            root = _insert(root, keys, len(names))
            names.append(".".join([str(key) for key, _ in keys]))
    return _Layout(root, names, jax.tree.leaves(root), bool(document.get("use_ocdbt")))


class _ItemReader:
    """One item of a step: its leaves' NaN and Inf counts (`counts`, in leaf order), read a batch
    at a time through tensorstore from orbax's zarr arrays (in an OCDBT database or a directory
    an array), or through orbax for any other layout. `layouts` holds the layouts parsed so far,
    by their `_METADATA`: the steps of a run most often share one."""

    def __init__(
        self, directory: pathlib.Path, bound: int, tally: _Tally, layouts: dict[bytes, _Layout]
    ) -> None:
        self.directory, self.bound, self.tally = directory, bound, tally
        try:
            text = (directory / "_METADATA").read_bytes()
            layout = layouts.get(text)
            if layout is None:
                layouts.clear()  # one kept: a run whose tree changes parses each once
                layout = layouts[text] = _layout(text)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            _saved_leaves(directory)  # raises the error `load` raises
            raise _damaged(directory, "its _METADATA is not orbax's tree metadata") from None
        if layout.use_ocdbt and not (directory / "manifest.ocdbt").is_file():
            _saved_leaves(directory)  # raises: its manifest.ocdbt is missing
        self.layout = layout
        self.expected = len(layout.names)
        self.counts = np.zeros((self.expected, 2), np.int64)
        self.arrays: list[tuple[tuple[int, ...], np.dtype[Any]] | None] = [None] * self.expected
        self.structs: Any = None  # the tree as orbax reads its metadata, where orbax reads it

    def batches(self) -> Iterator[None]:
        try:
            yield from self._zarr()
        except _OtherLayout:
            self.counts[:] = 0
            yield from self._orbax()
        if len(self.counts) != self.expected:
            raise _damaged(self.directory, f"{len(self.counts)} of its {self.expected} leaves can be read")

    def tree(self) -> Any:
        """The item's tree, `ShapeDtypeStruct` leaves (as `load(..., scalars=False)`, unplaced)."""
        if self.structs is not None:
            return self.structs
        arrays = self.arrays
        return jax.tree.map(lambda n: jax.ShapeDtypeStruct(*arrays[n]), self.layout.structure)  # type: ignore[misc]

    def _zarr(self) -> Iterator[None]:
        import tensorstore as ts

        directory, layout = self.directory, self.layout
        if len(layout.order) != len(layout.names):  # two arrays at one place: orbax decides
            raise _OtherLayout
        if (directory / "manifest.ocdbt").exists():
            base: dict[str, Any] = {"driver": "ocdbt", "base": directory.as_uri()}
            prefix = ""
        else:  # a directory an array
            base, prefix = {"driver": "file"}, f"{directory}/"
        context = ts.Context()
        position = {number: place for place, number in enumerate(layout.order)}
        for start in range(0, len(layout.order), _BATCH):
            numbers = layout.order[start : start + _BATCH]
            specs = [{**_ZARR, "kvstore": {**base, "path": f"{prefix}{layout.names[n]}/"}} for n in numbers]
            openings = [ts.open(spec, open=True, read=True, context=context) for spec in specs]
            try:
                opened = [opening.result() for opening in openings]
            except Exception:  # no zarr array there: another layout (or damage, which orbax reports)
                _collect_quietly()
                raise _OtherLayout from None
            reader = _Reads(self.bound, self.counts, self.tally, directory)
            for number, spec, array in zip(numbers, specs, opened, strict=True):
                dtype = array.dtype.numpy_dtype
                self.arrays[number] = (tuple(array.shape), dtype)
                nbytes = array.size * dtype.itemsize
                if not nbytes or not _floating(dtype):
                    continue
                if nbytes <= self.bound:
                    reader.read(position[number], array, (), nbytes)
                else:
                    self._read_array(reader, position[number], array, spec, dtype.itemsize)
            reader.drain()
            self.tally.advance(0, len(numbers))
            yield

    def _read_array(
        self, reader: _Reads, place: int, array: Any, spec: dict[str, Any], itemsize: int
    ) -> None:
        import tensorstore as ts

        bound = self.bound
        saved = array.chunk_layout.read_chunk.shape or array.shape
        chunk = tuple(max(1, min(int(c or n), n)) for c, n in zip(saved, array.shape, strict=True))
        chunk_bytes = math.prod(chunk) * itemsize
        if chunk_bytes > bound:
            # slices smaller than a storage chunk: each chunk decoded once, kept in a cache meanwhile
            reader.drain()
            cached = ts.Context({"cache_pool": {"total_bytes_limit": chunk_bytes + chunk_bytes // 8}})
            array = reader.opened(ts.open(spec, open=True, read=True, context=cached))
        for box in _slices(tuple(array.shape), itemsize, chunk, bound):
            reader.read(place, array, box, math.prod(s.stop - s.start for s in box) * itemsize)
        if chunk_bytes > bound:
            reader.drain()

    def _orbax(self) -> Iterator[None]:
        """The counts read through orbax, the floating leaves in groups of at most `bound` bytes
        (a larger leaf alone)."""
        ocp = _orbax()
        directory = self.directory
        try:
            with _quiet():
                structs = _read_item(ocp, directory, "metadata")
            leaves, treedef = jax.tree.flatten(structs)
            self.counts = np.zeros((len(leaves), 2), np.int64)
            self.structs = structs
            sizes = [_floating_bytes(leaf) for leaf in leaves]
            checkpointer = ocp.PyTreeCheckpointer()
            for group in _groups(sizes, self.bound):
                nbytes = sum(sizes[n] for n in group)
                self.tally.add(nbytes)
                with _quiet():
                    values = _restore(ocp, checkpointer, directory, leaves, treedef, set(group))
                for number in group:
                    _count(self.counts, number, np.asarray(values[number]))
                self.tally.advance(nbytes, len(group))
                yield
        except CheckpointError:
            raise
        except Exception as error:  # orbax's and tensorstore's own errors, OSError included
            _collect_quietly()
            raise _damaged(directory, _reason(error)) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No orbax warnings or absl log lines on stderr while reading."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


class _Reads:
    """Reads in flight, at most `bound` bytes of them together (and at least one)."""

    def __init__(self, bound: int, counts: np.ndarray, tally: _Tally, directory: pathlib.Path) -> None:
        self.bound, self.counts, self.tally, self.directory = bound, counts, tally, directory
        self.pending: list[tuple[int, Any, int]] = []
        self.in_flight = 0

    def read(self, number: int, array: Any, box: tuple[slice, ...], nbytes: int) -> None:
        if self.pending and self.in_flight + nbytes > self.bound:
            self.drain()
        self.tally.add(nbytes)
        self.pending.append((number, array[box].read() if box else array.read(), nbytes))
        self.in_flight += nbytes

    def drain(self) -> None:
        done = 0
        try:
            for number, future, nbytes in self.pending:
                _count(self.counts, number, future.result())
                done += nbytes
        except Exception as error:  # tensorstore's errors: a data file missing, cut short, damaged
            _collect_quietly()
            raise _damaged(self.directory, _reason(error)) from None
        finally:
            self.pending, self.in_flight = [], 0
        self.tally.advance(done)

    def opened(self, opening: Any) -> Any:
        try:
            return opening.result()
        except Exception as error:
            raise _damaged(self.directory, _reason(error)) from None


def _count(counts: np.ndarray, number: int, values: np.ndarray) -> None:
    counts[number, 0] += int(np.count_nonzero(np.isnan(values)))
    counts[number, 1] += int(np.count_nonzero(np.isinf(values)))


def _slices(
    shape: tuple[int, ...], itemsize: int, chunk: tuple[int, ...], bound: int
) -> Iterator[tuple[slice, ...]]:
    """The reads of an array: the whole array where it fits in `bound` bytes, else each storage
    chunk (`chunk`, the shape orbax saved it in) whole where it fits, else slices of the chunk
    along its leading axes, each at most `bound` bytes (one element at least).

    >>> list(_slices((6, 4), 4, (6, 4), 96))
    [()]
    >>> [tuple((s.start, s.stop) for s in box) for box in _slices((6, 4), 4, (6, 4), 40)]
    [((0, 2), (0, 4)), ((2, 4), (0, 4)), ((4, 6), (0, 4))]
    >>> [tuple((s.start, s.stop) for s in box) for box in _slices((5, 4), 4, (3, 2), 40)]
    [((0, 3), (0, 2)), ((0, 3), (2, 4)), ((3, 5), (0, 2)), ((3, 5), (2, 4))]
    """
    if math.prod(shape) * itemsize <= bound:
        yield ()
        return
    grid = [range(0, n, c) for n, c in zip(shape, chunk, strict=True)]
    for corner in itertools.product(*grid):
        box = tuple(min(c, n - start) for start, c, n in zip(corner, chunk, shape, strict=True))
        for inner in _rows(box, itemsize, bound):
            yield tuple(
                slice(start + s.start, start + s.stop) for start, s in zip(corner, inner, strict=True)
            )


def _rows(box: tuple[int, ...], itemsize: int, bound: int) -> Iterator[tuple[slice, ...]]:
    """`box` in slices of at most `bound` bytes (one element at least), along its leading axes."""
    if not box or math.prod(box) * itemsize <= bound:
        yield tuple(slice(0, n) for n in box)
        return
    # the first axis whose rows (every element after it) fit in `bound`; the last axis at worst
    fits = (a for a in range(len(box)) if math.prod(box[a + 1 :]) * itemsize <= bound)
    axis = next(fits, len(box) - 1)
    rows = max(1, bound // (math.prod(box[axis + 1 :]) * itemsize))
    for outer in itertools.product(*(range(n) for n in box[:axis])):
        for start in range(0, box[axis], rows):
            head = tuple(slice(i, i + 1) for i in outer)
            tail = tuple(slice(0, n) for n in box[axis + 1 :])
            yield (*head, slice(start, min(start + rows, box[axis])), *tail)


def _restore(
    ocp: Any, checkpointer: Any, directory: pathlib.Path, leaves: list[Any], treedef: Any, chosen: set[int]
) -> list[Any]:
    """The leaves numbered `chosen` read by orbax (the others left unread), in leaf order."""
    item = [leaf if n in chosen else ocp.PLACEHOLDER for n, leaf in enumerate(leaves)]
    as_numpy = ocp.RestoreArgs(restore_type=np.ndarray)
    arguments = [as_numpy if n in chosen else None for n in range(len(leaves))]
    restore = ocp.args.PyTreeRestore(item=treedef.unflatten(item), restore_args=treedef.unflatten(arguments))
    return list(treedef.flatten_up_to(checkpointer.restore(directory, args=restore)))


def _floating_bytes(leaf: Any) -> int:
    """The bytes of a floating leaf of the metadata (0 for any other: none to read)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not _floating(np.dtype(dtype)):
        return 0
    return math.prod(leaf.shape) * np.dtype(dtype).itemsize


@functools.cache
def _floating(dtype: np.dtype[Any]) -> bool:
    """Whether `dtype` can hold NaN or Inf (floating and complex, bfloat16 and float8 included)."""
    return bool(jax.numpy.issubdtype(dtype, jax.numpy.inexact))


def _groups(sizes: list[int], bound: int) -> list[list[int]]:
    """The leaves with bytes to read, in groups of at most `bound` bytes (a larger leaf alone).

    >>> _groups([4, 0, 4, 9, 1], 8)
    [[0, 2], [3], [4]]
    """
    groups: list[list[int]] = []
    total = 0
    for number, size in enumerate(sizes):
        if not size:
            continue
        if not groups or total + size > bound:
            groups.append([])
            total = 0
        groups[-1].append(number)
        total += size
    return groups


def _shown(progress: bool | None) -> float | None:
    """After how many seconds progress shows (None: never)."""
    if progress is not None:
        return 0.0 if progress else None
    try:
        return _DELAY if sys.stderr is not None and sys.stderr.isatty() else None
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return None


class _Progress:
    """Progress on stderr, a bar over the steps planned, with the leaves and bytes read of the
    step being read: tqdm's or rich's where importable, else one line rewritten; shown once
    `delay` seconds have passed (never where `delay` is None)."""

    def __init__(self, delay: float | None, total: int) -> None:
        self.delay, self.total = delay, total
        self.started = time.monotonic()
        self.done = 0
        self.tally: _Tally | None = None
        self.shown: Any = None
        self.last = 0.0

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *_: object) -> None:
        if self.shown is not None:
            with contextlib.suppress(Exception):  # a closed stderr: nothing to clear
                self.shown.close()

    def start_step(self, tally: _Tally, done: int) -> None:
        """Show the step `tally` counts, `done` steps read before it."""
        self.tally, self.done = tally, done
        self.show(force=True)

    def show(self, force: bool = False) -> None:
        tally = self.tally
        if self.delay is None or tally is None:
            return
        now = time.monotonic()
        if now - self.started < self.delay or (not force and now - self.last < 0.1):
            return
        self.last = now
        read = f"{tally.leaves_read:,} of {tally.leaves:,} leaves, {tally.bytes_read / 2**20:,.0f} MB"
        try:
            if self.shown is None:
                self.shown = _bar(self.total)
            self.shown.update(self.done, f"step {tally.step}: {read}")
        except Exception:  # a closed stderr, a progress library's own failure: no progress
            self.delay = None


def _bar(total: int) -> Any:
    """A progress bar on stderr: `update(done, text)` and `close()`."""
    with contextlib.suppress(ImportError):
        return _TqdmBar(total)
    with contextlib.suppress(ImportError):
        return _RichBar(total)
    return _LineBar(total)


class _TqdmBar:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, file=sys.stderr, leave=False, unit="step", desc="first bad")

    def update(self, done: int, text: str) -> None:
        self.bar.n = done
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        self.bar.close()


class _RichBar:
    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(file=sys.stderr, force_terminal=True)
        self.bar = Progress(
            TextColumn("first bad"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
            console=console, transient=True,
        )  # fmt: skip
        self.task = self.bar.add_task("", total=total)
        self.bar.start()

    def update(self, done: int, text: str) -> None:
        self.bar.update(self.task, completed=done, description=text)

    def close(self) -> None:
        self.bar.stop()


class _LineBar:
    def __init__(self, total: int) -> None:
        self.total = total

    def update(self, done: int, text: str) -> None:
        sys.stderr.write(f"\rfirst bad: {done}/{self.total} steps read, {text}\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
