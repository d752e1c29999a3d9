"""`metrics`: a flat dict of scalars for a logger (docs/metrics.md): the RMS of the parameters,
gradients, updates and each moment field by region, the update ratio, the count of non-finite
elements, and the injected hyperparameters. One jitted computation: returned from a jitted
training step as tracers, or read eagerly in one dispatch and one transfer.

Which leaves enter which value is worked out from the structures alone (`_layout`, cached per
structure), then for the dtypes of the leaves (`_Plan`, cached on the layout); `_compute` reduces
each floating leaf once (small ones of one shape and dtype stacked) and combines the sums of
squares by segment sums.

>>> import jax.numpy as jnp, optax
>>> params = {"w": jnp.ones((2, 2))}
>>> sorted(metrics(optax.adam(1e-3).init(params), params=params))[:4]
['all/mu_rms', 'all/nonfinite', 'all/nu_rms', 'all/params_rms']
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from ._cache import index_and_leaves, on_clear, structure_index
from ._compat import is_nnx_variable_type
from ._errors import (
    DeletedArrayError,
    InvalidArgumentError,
    NoMatchError,
    StructureError,
    bounded,
    listing,
    raised_here,
)
from ._index import StructureIndex
from ._leaf import at_least_float32, is_deleted, unwrap_all
from ._optax.closures import Optimizer
from ._optax.hyperparams import hyperparams
from ._paths import value_at
from ._query import ParsedQuery, PredicateQuery, parse_query
from ._resolve import no_match_error
from ._roles import NAMED, field_role, leaf_roles, moment_roots, names_under, params_field
from ._values import leaf_table

ALL = "all"
"""The region of every leaf."""
GIVEN = ("params", "grads", "updates")
"""The params-shaped trees a caller may give, in the order of their fields."""
_NOT_MOMENTS = frozenset({"acc_grads"})
"""Params-shaped fields of optax states that are no moment: `MultiSteps`' sum of gradients."""
_PARTITIONS = ("PartitionState", "MultiTransformState")
_VALUE_TYPES = (jax.Array, jax.core.Tracer, np.ndarray, np.generic, float, complex)
"""Leaf types that may hold floating numbers (a Python int or bool never does)."""
_STACKED = 1 << 16
"""Floating leaves of fewer elements, of one shape and dtype, are reduced stacked: one reduction
for a layer's parameters, gradients, updates and moments, not one each."""
Trees = list[tuple[str, Any, StructureIndex, list[Any]]]
"""The state, then the trees given: each its name, itself, its index and its leaves' values."""


@raised_here
def metrics(
    state: PyTree,
    /,
    *,
    params: PyTree | None = None,
    grads: PyTree | None = None,
    updates: PyTree | None = None,
    optimizer: Optimizer | None = None,
    regions: Mapping[str, Any] | None = None,
) -> dict[str, Array]:
    """A flat dict of scalars for a logger: for `all` and each region `r`, `r/params_rms`,
    `r/grads_rms`, `r/updates_rms` (each where that tree is given, or the state holds its
    params), `r/<field>_rms` for each moment field of the optax states (`mu`, `nu`, `trace`, ...;
    fields of one name in several states together; never `MultiSteps`' `acc_grads`),
    `r/update_ratio` (updates RMS over params RMS) and `r/nonfinite` (NaN and Inf elements in
    every tree given, the state included); and each injected hyperparameter (with `optimizer=`,
    also those in its closures) under its `hyperparams` key; all in sorted order, as a jitted
    function returns them. Regions: the parameters' top-level keys, the groups of an
    `optax.partition`, or `regions={name: query}` (docs/metrics.md).

    Under `jit` the values are tracers, to return from the training step; eagerly NumPy scalars,
    from one jitted computation compiled once per tree structure.

    ```python
    >>> import jax.numpy as jnp, optax
    >>> from optree_inspect import metrics
    >>> params = {"w": jnp.ones((2, 2))}
    >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.5)
    >>> found = metrics(tx.init(params), params=params)
    >>> float(found["w/params_rms"]), int(found["all/nonfinite"]), float(found["learning_rate"])
    (1.0, 0, 0.5)

    ```
    """
    chosen = _checked_regions(regions)
    index, leaves = index_and_leaves(state)
    values = unwrap_all(leaves)
    trees: Trees = [("state", state, index, values)]
    for name, tree in zip(GIVEN, (params, grads, updates), strict=True):
        if tree is not None:
            given_index, given_leaves = index_and_leaves(tree)
            trees.append((name, tree, given_index, unwrap_all(given_leaves)))
    everything = [value for *_, tree_values in trees for value in tree_values]
    layout = _layout(trees, leaf_roles(index, values), chosen)
    candidates = [everything[position] for position in layout.candidates]
    plan = layout.plan(candidates)
    arguments = tuple(map(_readable, (candidates[number] for number in plan.arguments)))
    try:
        if _spread(arguments) or _on_several_device_sets(arguments):
            floats, counts, usual = (*_from_leaf_rows(plan, arguments), True)
        else:
            traced = any(isinstance(x, jax.core.Tracer) for x in arguments)
            floats, counts, usual = _compute(plan, arguments, traced)
            if not traced and isinstance(floats, jax.core.Tracer):  # concrete arrays inside a trace
                floats, counts, usual = _compute(plan, arguments, True)
    except Exception:
        if any(map(is_deleted, arguments)):
            raise DeletedArrayError(
                "An array of the tree was deleted (donated to a jitted function?): its data is gone. "
                "Use the state the jitted call returned."
            ) from None
        raise
    read = hyperparams(state, optimizer=optimizer)
    found: dict[str, Any]
    if isinstance(floats, jax.core.Tracer) or any(isinstance(v, jax.core.Tracer) for v in read.values()):
        found = {key: jnp.asarray(value) for key, value in read.items()}
        found.update((key, floats[n]) for n, key in enumerate(plan.float_keys))
        found.update((key, counts[n]) for n, key in enumerate(plan.count_keys))
    else:
        floats, counts, read, usual = jax.device_get((floats, counts, read, usual))  # one transfer
        if not usual:  # squares that overflow or underflow, zeros, NaN or Inf: read exactly
            floats, counts = _from_leaf_rows(plan, arguments)
        found = {key: np.asarray(value)[()] for key, value in read.items()}
        found.update(zip(plan.float_keys, floats, strict=True))
        found.update(zip(plan.count_keys, counts, strict=True))
    return dict(sorted(found.items()))  # in the order a jitted function returns a dict in


def _checked_regions(regions: Any) -> tuple[tuple[str, Any, ParsedQuery], ...] | None:
    """`regions=` as (name, query, parsed query) triples; InvalidArgumentError where it is not a
    mapping of names (non-empty, without `/`, not `all`) to queries."""
    if regions is None:
        return None
    if not isinstance(regions, Mapping):
        raise InvalidArgumentError(
            f"regions= takes a mapping of region names to queries, such as {{'attention': 'attn*'}}; "
            f"got {type(regions).__name__}."
        )
    checked = []
    for name, query in regions.items():
        if not isinstance(name, str) or not name or "/" in name or name == ALL:
            raise InvalidArgumentError(
                f"A region's name is a non-empty string without '/', other than {ALL!r} (the region "
                f"of every leaf); got {bounded(repr(name))}."
            )
        checked.append((name, query, parse_query(query)))
    return tuple(checked)


# Which leaves enter which value ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Plan:
    """What `_compute` computes, for leaves of known dtypes: its `arguments` (numbers among the
    layout's candidates: the floating ones), the RMS of each `rms` entry's arguments, each ratio
    of two RMS entries (`ratios`: updates, params), the non-finite elements of each `nonfinite`
    entry's arguments; the keys of its float results (RMS, then ratios) and of its counts. Equal
    plans hash and compare equal, so that `jax.jit` compiles once for them even where a plan is
    built anew (a predicate region)."""

    arguments: tuple[int, ...]
    rms: tuple[tuple[int, ...], ...]
    ratios: tuple[tuple[int, int], ...]
    nonfinite: tuple[tuple[int, ...], ...]
    float_keys: tuple[str, ...]
    count_keys: tuple[str, ...]
    hashed: int = field(init=False)

    def _content(self) -> tuple[Any, ...]:
        return (self.arguments, self.rms, self.ratios, self.nonfinite, self.float_keys, self.count_keys)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashed", hash(self._content()))

    def __hash__(self) -> int:
        return self.hashed

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, _Plan) or other.hashed != self.hashed:
            return False
        return self._content() == other._content()


@dataclass
class _Layout:
    """Which leaves enter which value, from the structures alone: the `candidates` (positions
    among all leaves of those that may hold floats, each array once), each region's `rms` entries
    (a field's name, and numbers among the candidates) and `nonfinite` candidates, the regions'
    names (`all` first), and the plans made from it so far, by which candidates are floating."""

    candidates: tuple[int, ...]
    regions: tuple[str, ...]
    rms: list[list[tuple[str, tuple[int, ...]]]]
    nonfinite: list[tuple[int, ...]]
    plans: dict[tuple[bool, ...], _Plan] = field(default_factory=dict)

    def plan(self, candidates: list[Any]) -> _Plan:
        """The plan for these candidates' dtypes."""
        floating = tuple(map(_is_floating, candidates))
        found = self.plans.get(floating)
        if found is None:
            found = self.plans[floating] = self._plan(floating)
        return found

    def _plan(self, floating: tuple[bool, ...]) -> _Plan:
        arguments = tuple(n for n, is_float in enumerate(floating) if is_float)
        number = {candidate: n for n, candidate in enumerate(arguments)}
        rms: list[tuple[int, ...]] = []
        float_keys: list[str] = []
        ratios: list[tuple[int, int]] = []
        ratio_keys: list[str] = []
        for region, entries in zip(self.regions, self.rms, strict=True):
            entry_of = {}
            for name, members in entries:
                chosen = tuple(number[m] for m in members if m in number)
                if chosen:
                    entry_of[name] = len(rms)
                    rms.append(chosen)
                    float_keys.append(f"{region}/{name}_rms")
            if "updates" in entry_of and "params" in entry_of:
                ratios.append((entry_of["updates"], entry_of["params"]))
                ratio_keys.append(f"{region}/update_ratio")
        nonfinite = tuple(tuple(number[m] for m in members if m in number) for members in self.nonfinite)
        return _Plan(
            arguments=arguments,
            rms=tuple(rms),
            ratios=tuple(ratios),
            nonfinite=nonfinite,
            float_keys=(*float_keys, *ratio_keys),
            count_keys=tuple(f"{region}/nonfinite" for region in self.regions),
        )


_FLOATING: dict[Any, bool] = {}


def _is_floating(value: Any) -> bool:
    """Whether a leaf holds floating (or complex) numbers: one at least."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return isinstance(value, float | complex)
    found = _FLOATING.get(dtype)
    if found is None:
        found = _FLOATING[dtype] = bool(jnp.issubdtype(dtype, jnp.inexact))
    return found and getattr(value, "size", 1) != 0  # a zero-size array holds none


_LAYOUTS: collections.OrderedDict[Hashable, tuple[tuple[StructureIndex, ...], list[str], _Layout]] = (
    collections.OrderedDict()
)
_LAYOUTS_SIZE = 32
_LOCK = threading.Lock()


def _clear() -> None:
    with _LOCK:
        _LAYOUTS.clear()


on_clear(_clear)


def _layout(
    trees: Trees,
    roles: list[str],
    regions: tuple[tuple[str, Any, ParsedQuery], ...] | None,
) -> _Layout:
    """The layout for these trees, from the cache where their structures were seen; a predicate
    region is resolved anew on each call (it may look at values). The cache holds the indexes it
    was made for, so that their ids, in its keys, stay theirs."""
    key: Hashable = None
    if regions is None or not any(isinstance(parsed, PredicateQuery) for *_, parsed in regions):
        queries = None if regions is None else tuple((name, query) for name, query, _ in regions)
        key = (tuple((name, id(index)) for name, _, index, _ in trees), queries)
        try:
            hash(key)
        except TypeError:  # an unhashable query
            key = None
    if key is not None:
        with _LOCK:
            cached = _LAYOUTS.get(key)
        if cached is not None and (cached[1] is roles or cached[1] == roles):
            return cached[2]
    layout = _build(trees, roles, regions)
    if key is not None:
        with _LOCK:
            _LAYOUTS[key] = (tuple(index for _, _, index, _ in trees), roles, layout)
            while len(_LAYOUTS) > _LAYOUTS_SIZE:
                _LAYOUTS.popitem(last=False)
    return layout


def _build(
    trees: Trees,
    roles: list[str],
    regions: tuple[tuple[str, Any, ParsedQuery], ...] | None,
) -> _Layout:
    index = trees[0][2]
    bases, base = {}, 0
    for name, _, _, tree_values in trees:
        bases[name] = base
        base += len(tree_values)
    sources = _sources(trees, roles, bases)
    fields = _fields(sources)
    _check_names(sources, fields)
    if regions is None:
        names, members = _default_regions(index, sources, fields)
    else:
        names = [name for name, _, _ in regions]
        members = [_selected(name, query, parsed, sources, fields) for name, query, parsed in regions]
    candidate_of = _candidates(trees)
    candidates = sorted({c for c in candidate_of if c >= 0})
    number = {position: n for n, position in enumerate(candidates)}

    def numbered(positions: set[int]) -> tuple[int, ...]:
        return tuple(sorted({number[candidate_of[p]] for p in positions if candidate_of[p] >= 0}))

    every = [{s.position(leaf) for s in sources[f] for leaf in s.leaves} for f in fields]
    rms = []
    nonfinite = [tuple(range(len(candidates)))]
    for region_number, held in enumerate([every, *members]):
        rms.append([(key, numbered(positions)) for key, positions in zip(fields, held, strict=True)])
        if region_number:
            nonfinite.append(numbered(set().union(*held)))
    return _Layout(tuple(candidates), (ALL, *names), rms, nonfinite)


def _fields(sources: dict[str, list[_Source]]) -> list[str]:
    """The fields: the trees given (or the state's params), then the moment fields by name."""
    return [name for name in GIVEN if name in sources] + sorted(n for n in sources if n not in GIVEN)


def _candidates(trees: Trees) -> list[int]:
    """For each leaf of the trees (concatenated), its position among `_compute`'s candidates, or
    -1: a leaf that holds no floats (a Python int, None, a string, an abstract array), or one of
    the state's own parameters where `params=` is given (they stand for them: counted once,
    whether or not they are the same arrays, eagerly and under `jit` alike). An nnx Variable
    that is a leaf (before flax 0.11) stands for its value."""
    kinds = [index.types[node] for _, _, index, _ in trees for node in index.leaf_nodes]
    holds = [issubclass(kind, _VALUE_TYPES) or is_nnx_variable_type(kind) for kind in kinds]
    candidate_of = [p if held else -1 for p, held in enumerate(holds)]
    index = trees[0][2]
    own = params_field(index)
    if own is not None and any(name == "params" for name, *_ in trees[1:]):
        start, count = index.leaf_starts[own], index.leaf_counts[own]
        candidate_of[start : start + count] = [-1] * count
    return candidate_of


@dataclass
class _Source:
    """A params-shaped tree: the parameters, gradients, updates, or one moment field of a state.
    `tree` is it, `index` and `root` where it stands in its whole tree's index, `base` the
    position of that whole tree's first leaf among all leaves, `leaves` its leaves (node numbers
    in `index`) that enter its values, `given` whether it is a tree given as an argument."""

    tree: Any
    index: StructureIndex
    root: int
    base: int
    leaves: list[int]
    given: bool = False

    def position(self, leaf: int) -> int:
        return self.base + self.index.leaf_starts[leaf]

    def names(self, leaf: int) -> tuple[str, ...]:
        return names_under(self.index, self.root, leaf)


def _sources(
    trees: list[tuple[str, Any, StructureIndex, list[Any]]], roles: list[str], bases: dict[str, int]
) -> dict[str, list[_Source]]:
    """The params-shaped trees by field: `params`, `grads`, `updates` where given (`params`
    else the state's own params field), then each moment field's name (its roots, in tree order)."""
    _, state, index, _ = trees[0]
    found: dict[str, list[_Source]] = {}
    for name, tree, tree_index, _ in trees[1:]:
        found[name] = [_Source(tree, tree_index, 0, bases[name], _leaves_under(tree_index, 0), True)]
    own = params_field(index)
    if "params" not in found and own is not None:
        subtree = value_at(state, index.path(own))
        found["params"] = [_Source(subtree, index, own, 0, _leaves_under(index, own))]
    for root in moment_roots(index):
        name = field_role(index, root)
        if name in NAMED or _is_accumulator(index, root, name):
            continue
        leaves = [leaf for leaf in _leaves_under(index, root) if roles[index.leaf_starts[leaf]] == name]
        if leaves:
            subtree = value_at(state, index.path(root))
            found.setdefault(_key_name(name), []).append(_Source(subtree, index, root, 0, leaves))
    return found


def _leaves_under(index: StructureIndex, root: int) -> list[int]:
    return [node for node in range(root, root + index.sizes[root]) if index.is_leaf[node]]


def _is_accumulator(index: StructureIndex, root: int, name: str) -> bool:
    """`MultiSteps`' `acc_grads`, typed or restored: a sum of gradients, no moment."""
    parent = index.parents[root]
    kinds = (index.state_names[parent], *index.restored_names.get(parent, ()))
    return name in _NOT_MOMENTS and "MultiStepsState" in kinds


def _key_name(field_name: str) -> str:
    """The name a moment field's values are keyed by: one named like a tree given (lbfgs's
    `params` and `updates`) is `state_params`, `state_updates`."""
    base = field_name.removesuffix(" (state)")
    return f"state_{base}" if base in GIVEN else field_name


def _check_names(sources: dict[str, list[_Source]], fields: list[str]) -> None:
    """StructureError where a tree given holds no leaf of some name the moments hold."""
    held = {
        source.names(leaf)
        for name in fields
        if name not in GIVEN
        for source in sources[name]
        for leaf in source.leaves
        if source.names(leaf)
    }
    if not held:
        return
    for name in GIVEN:
        if name not in sources or not sources[name][0].given:
            continue
        [source] = sources[name]
        have = {source.names(leaf) for leaf in source.leaves}
        missing = sorted(held - have)
        if missing:
            rows = [".".join(names) for names in missing]
            raise StructureError(
                f"{name}= does not match the state's moments by name: they hold {len(missing):,} "
                f"parameter{'s' * (len(missing) != 1)} that {name}= lacks:\n{listing(rows)}\n"
                f"Pass the tree shaped like the parameters the optimizer was initialised with."
            )


def _default_regions(
    index: StructureIndex, sources: dict[str, list[_Source]], fields: list[str]
) -> tuple[list[str], list[list[set[int]]]]:
    """The region names and, for each, the positions of each field's leaves in it: the groups of
    an `optax.partition`, else the parameters' top-level names (below a single one)."""
    named = [(f, s, leaf, s.names(leaf)) for f in fields for s in sources[f] for leaf in s.leaves]
    groups = _partition_groups(index)
    if groups:
        region_of = _group_regions(index, groups, sources, fields, named)
        names = list(dict.fromkeys(groups.values()))
    else:
        depth = _common_depth([names for *_, names in named if names])
        region_of = [names[depth] if len(names) > depth else None for *_, names in named]
        names = sorted({r for r in region_of if r is not None})
    if ALL in names:
        raise InvalidArgumentError(
            f"A default region would be called {ALL!r}, the region of every leaf: name the regions "
            "with regions={name: query}."
        )
    number = {name: n for n, name in enumerate(names)}
    members: list[list[set[int]]] = [[set() for _ in fields] for _ in names]
    column = {f: n for n, f in enumerate(fields)}
    for (f, source, leaf, _), region in zip(named, region_of, strict=True):
        if region is not None:
            members[number[region]][column[f]].add(source.position(leaf))
    return names, members


def _common_depth(all_names: list[tuple[str, ...]]) -> int:
    """How many leading names every leaf shares (fewer than the shortest has): the regions are
    the names at that depth, so that flax's `{'params': {...}}` is regioned by its layers."""
    if not all_names:
        return 0
    depth, shortest = 0, min(map(len, all_names)) - 1
    first = all_names[0]
    while depth < shortest and all(names[depth] == first[depth] for names in all_names):
        depth += 1
    return depth


def _partition_groups(index: StructureIndex) -> dict[int, str]:
    """The node of each group of each `optax.partition` state (typed or restored), with its label."""
    groups: dict[int, str] = {}
    for state in sorted({node for name in _PARTITIONS for node in index.by_state_name.get(name, [])}):
        for child in index.children(state):
            if index.texts[child] == "inner_states":
                groups.update((group, index.texts[group]) for group in index.children(child))
    return groups


def _group_regions(
    index: StructureIndex,
    groups: dict[int, str],
    sources: dict[str, list[_Source]],
    fields: list[str],
    named: list[tuple[str, _Source, int, tuple[str, ...]]],
) -> list[str | None]:
    """The group of each leaf: a moment's is the group that holds it; a parameter's (gradient's,
    update's) the group whose moments hold its name, else the one group without moments."""
    by_name: dict[tuple[str, ...], str] = {}
    with_moments: set[str] = set()
    own: dict[int, str] = {}
    for name in fields:
        if name in GIVEN:
            continue
        for source in sources[name]:
            chain = [*index.ancestors(source.root), source.root]
            group = next((groups[node] for node in reversed(chain) if node in groups), None)
            if group is None:
                continue
            own[id(source)] = group
            with_moments.add(group)
            for leaf in source.leaves:
                by_name.setdefault(source.names(leaf), group)
    without = [group for group in dict.fromkeys(groups.values()) if group not in with_moments]
    fallback = without[0] if len(without) == 1 else None
    return [own.get(id(source)) or by_name.get(names, fallback) for _, source, _, names in named]


def _selected(
    name: str, query: Any, parsed: ParsedQuery, sources: dict[str, list[_Source]], fields: list[str]
) -> list[set[int]]:
    """The positions of each field's leaves that the region's query selects, resolved in each
    params-shaped tree on its own; NoMatchError where it selects nothing in any."""
    found: list[set[int]] = []
    for f in fields:
        positions: set[int] = set()
        for source in sources[f]:
            positions.update(_selected_in(parsed, source))
        found.append(positions)
    if not any(found):
        trees = [source.tree for f in fields for source in sources[f]]
        if not trees:
            raise NoMatchError(
                f"Region {name!r}: there is no params-shaped tree to select from (no params=, grads=, "
                "updates= and no moment field in the state)."
            )
        miss = str(no_match_error(trees[0], parsed))
        raise NoMatchError(
            f"Region {name!r}: {bounded(repr(query))} selects nothing in the parameters, gradients, "
            f"updates or moments.\nIn the {fields[0]}: {miss}"
        )
    return found


def _selected_in(parsed: ParsedQuery, source: _Source) -> set[int]:
    """The positions of the leaves of `source` at or under a node the query selects in it."""
    if not source.leaves:
        return set()
    own = structure_index(source.tree)
    offset = source.base + source.index.leaf_starts[source.root]  # where its own first leaf stands
    wanted = {source.position(leaf) for leaf in source.leaves}
    positions: set[int] = set()
    for path, _ in parsed.select(source.tree):
        node = own.number_of(path)
        if node is None:
            continue
        start = offset + own.leaf_starts[node]
        positions.update(p for p in range(start, start + own.leaf_counts[node]) if p in wanted)
    return positions


# The computation --------------------------------------------------------------------------------


def _vectors(plan: _Plan, arguments: tuple[Any, ...], rescale: bool = True) -> tuple[Array, Array, Array]:
    """The RMS of each entry, then each ratio, in JAX's default float dtype; the non-finite
    elements of each count entry, in its default int dtype; and whether the plain sums of
    squares were usual (`_sums_of_squares`, whose `rescale` it takes: without, the RMS are
    right only where they were)."""
    floating = jax.dtypes.canonicalize_dtype(np.float64)
    integer = jax.dtypes.canonicalize_dtype(np.int64)
    arrays = [jnp.asarray(x) for x in arguments]
    if not arrays:
        return jnp.zeros((0,), floating), jnp.zeros((len(plan.nonfinite),), integer), jnp.asarray(True)
    groups = _groups(arrays)
    order = np.asarray([n for members in groups for n in members], np.int32)
    row_of = np.empty(len(arrays), np.int32)
    row_of[order] = np.arange(len(order), dtype=np.int32)
    stacked = [_stacked([arrays[n] for n in members]) for members in groups]
    squares, exponents, usual = _sums_of_squares(stacked, rescale)
    squares = squares.astype(floating)
    sizes = np.asarray([arrays[n].size for n in order], np.float64)
    entries = [row_of[list(m)] for m in plan.rms]
    # each entry's sum of squares is `totals * 4**top`: its rows' scaled to its largest row's
    top = _segment_reduce(exponents, entries, jax.ops.segment_max)
    rows, ids = _rows_and_ids(entries)
    relative = jnp.ldexp(squares[rows], 2 * (exponents[rows] - top[ids]))
    totals = jax.ops.segment_sum(relative, ids, num_segments=len(entries))
    elements = np.asarray([sizes[rows_].sum() for rows_ in entries], np.float64)
    rms = jnp.ldexp(jnp.sqrt(totals / elements.astype(floating)), top)
    ratios = [rms[updates] / rms[params] for updates, params in plan.ratios]
    floats = jnp.concatenate([rms, jnp.stack(ratios)]) if ratios else rms
    segments = [row_of[list(m)] for m in plan.nonfinite]
    return floats, _nonfinite_counts(stacked, squares, segments, integer), usual


_compute = jax.jit(_vectors, static_argnums=(0, 2))
"""`_vectors` compiled once per plan, argument shapes and `rescale`; inlined into a jitted
caller's trace."""


def _spread(arguments: tuple[Any, ...]) -> bool:
    """Concrete arrays of which one has shards on other processes."""
    return any(
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.is_fully_addressable
        for x in arguments
    )


def _readable(value: Any) -> Any:
    """A host value as JAX reads it, in its default float or complex dtype (a float64 beyond
    float32's range is Inf unless `jax_enable_x64`; a NumPy `longdouble` in float64 first), so
    that every route reads the same numbers."""
    if isinstance(value, jax.Array):
        return value
    if isinstance(value, float | complex):
        value = np.asarray(value)
    dtype = getattr(value, "dtype", None)
    if not isinstance(value, np.ndarray | np.generic) or dtype is None or dtype.kind not in "fc":
        return value
    wide = np.float64 if dtype.kind == "f" else np.complex128
    target = jax.dtypes.canonicalize_dtype(wide if dtype.itemsize >= np.dtype(wide).itemsize else dtype)
    if target == dtype:
        return value
    with np.errstate(over="ignore"):
        return np.asarray(value, wide).astype(target)


def _on_several_device_sets(arguments: tuple[Any, ...]) -> bool:
    """Concrete arrays on different sets of devices (pipeline stages), which one compiled program
    cannot take."""
    shardings = {
        x.sharding for x in arguments if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
    }
    return len({frozenset(sharding.device_set) for sharding in shardings}) > 1


def _from_leaf_rows(plan: _Plan, arguments: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    """`_vectors`' results from each argument's statistics (`leaf_table`: each reduced where it
    lives, in sums scaled by its largest magnitude, and, where arrays span processes, each
    process reducing the shards it holds, the rows exchanged once). Where arrays span processes
    (one partitioned program of every reduction would take XLA minutes to compile) or stand on
    several device sets, and eagerly where a plain sum of squares is not usual."""
    table = leaf_table(list(arguments))
    counts, sums = np.asarray(table.counts), np.asarray(table.sums)
    nan, inf = counts[:, 0], counts[:, 1]
    squares = sums[:, 4] * sums[:, 2] * sums[:, 2]  # of the finite elements, unscaled
    squares = np.where(nan > 0, np.nan, np.where(inf > 0, np.inf, squares))
    sizes = np.asarray([np.size(x) for x in arguments], np.float64)
    with np.errstate(all="ignore"):  # an empty region's RMS is NaN, as on a device
        rms = np.asarray([squares[list(m)].sum() / sizes[list(m)].sum() for m in plan.rms], np.float64)
        rms = np.sqrt(rms)
        ratios = np.asarray([rms[updates] / rms[params] for updates, params in plan.ratios], np.float64)
    floats = np.concatenate([rms, ratios]).astype(jax.dtypes.canonicalize_dtype(np.float64))
    nonfinite = np.asarray([(nan + inf)[list(m)].sum() for m in plan.nonfinite], np.int64)
    return floats, nonfinite.astype(jax.dtypes.canonicalize_dtype(np.int64))


_CHUNK = 64
"""The most small arrays stacked together: XLA's compile time grows fast with the operands of one
concatenation."""


def _groups(arrays: list[Array]) -> list[list[int]]:
    """The arguments in groups reduced together: the small ones by shape and dtype, at most
    `_CHUNK` a group, each large one alone."""
    groups: dict[Any, list[int]] = {}
    found: list[list[int]] = []
    for n, x in enumerate(arrays):
        if x.size >= _STACKED:
            found.append([n])
            continue
        members = groups.setdefault((x.shape, x.dtype), [])
        members.append(n)
        if len(members) == _CHUNK:
            found.append(groups.pop((x.shape, x.dtype)))
    return found + list(groups.values())


def _stacked(xs: list[Array]) -> Array:
    """Arrays of one shape and dtype as the rows of one matrix."""
    return jnp.stack(xs).reshape(len(xs), -1) if len(xs) > 1 else xs[0].reshape(1, -1)


def _shift(dtype: Any) -> int:
    """The power of two `k` that rescales a sum of squares in `dtype` that overflowed (the
    elements times `2**-k`) or is below `_marks`' least (times `2**k`): either way every normal
    element's square is then a normal number and the sum of up to `2**32` of them is finite
    (float32: 80)."""
    return int(jnp.finfo(dtype).maxexp) // 2 + 16


def _sums_of_squares(stacked: list[Array], rescale: bool) -> tuple[Array, Array, Array]:
    """The sum of squares (of magnitudes) of each row of the matrices `stacked`, in float32 at
    least, as `(sums, e)`: a row's sum is `sums * 4**e`; and whether every row's plain sum is
    usual: 0 or finite and at least `_marks`' least (a NaN or Inf, squares that overflow or
    underflow are not). Plain sums (`e` 0) are one reduction of each matrix, each nonzero
    element adding `_marks`' mark to its square, so that a zero row is told from one whose
    squares underflowed. Rescaled ones reduce each matrix again, the elements of a row whose
    plain sum overflowed times `2**-_shift`, of one whose sum is below the least times
    `2**_shift`, others as they are. With `rescale`, rescaled where some plain sum is not usual
    (a conditional: in a jitted step); else plain (eagerly: where some is not usual,
    `_from_leaf_rows` reads them, exactly)."""
    parts = [_parts(x) for x in stacked]
    plains, verdicts, leasts = [], [], []
    for each in parts:
        mark, least = _marks(each[0].dtype)
        marked = [jnp.square(part) + jnp.where(part != 0, mark, 0) for part in each]
        plains.append(_total([x.sum(axis=1) for x in marked]))
        verdicts.append(jnp.all((plains[-1] == 0) | ((plains[-1] >= least) & (plains[-1] < jnp.inf))))
        leasts.append(least)
    usual = jnp.all(jnp.stack(verdicts))
    plain = jnp.concatenate(plains)

    def unscaled(parts: list[list[Array]]) -> tuple[Array, Array]:
        return plain, jnp.zeros(plain.shape, jnp.int32)

    def scaled(parts: list[list[Array]]) -> tuple[Array, Array]:
        sums, exponents = [], []
        for each, sum_, least in zip(parts, plains, leasts, strict=True):
            shift = _shift(sum_.dtype)
            small = (sum_ > 0) & (sum_ < least)
            exponent = jnp.where(sum_ == jnp.inf, shift, jnp.where(small, -shift, 0)).astype(jnp.int32)
            # ldexp, not a product by a constant factor, which XLA may fold into the square
            shifted = [jnp.ldexp(part, -exponent[:, None]) for part in each]
            sums.append(_total([jnp.square(part).sum(axis=1) for part in shifted]))
            exponents.append(exponent)
        return jnp.concatenate(sums).astype(plain.dtype), jnp.concatenate(exponents)

    if rescale:
        return (*jax.lax.cond(usual, unscaled, scaled, parts), usual)
    return (*unscaled(parts), usual)


def _marks(dtype: Any) -> tuple[float, float]:
    """The mark a nonzero element adds to its square in an eager sum of squares in `dtype`, and
    the least usual marked sum: up to `2**31` marks are below its rounding (`2**-(nmant + 3)` of
    it), and so are the squares that underflow (float32: `2**-124` and `2**-67`)."""
    info = jnp.finfo(dtype)
    mark = int(info.minexp) + 2
    return 2.0**mark, 2.0 ** (mark + 31 + int(info.nmant) + 3)


def _total(sums: list[Array]) -> Array:
    """The sum of the real part's sums and (for a complex matrix) the imaginary part's."""
    return sums[0] if len(sums) == 1 else sums[0] + sums[1]


def _parts(x: Array) -> list[Array]:
    """A matrix's real and imaginary parts (its values alone where it is real), in float32 at
    least."""
    parts = [x.real, x.imag] if jnp.issubdtype(x.dtype, jnp.complexfloating) else [x]
    return [part.astype(at_least_float32(part.dtype)) for part in parts]


def _rows_and_ids(segments: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate(segments) if segments else np.zeros((0,), np.int32)
    ids = np.repeat(np.arange(len(segments), dtype=np.int32), [len(rows_) for rows_ in segments])
    return rows, ids


def _segment_reduce(values: Array, segments: list[np.ndarray], reduce: Any = jax.ops.segment_sum) -> Array:
    """`reduce` (a `jax.ops.segment_*`) of `values` over each segment's rows."""
    if not segments:
        return jnp.zeros((0,), values.dtype)
    rows, ids = _rows_and_ids(segments)
    return reduce(values[rows], ids, num_segments=len(segments))


def _nonfinite_counts(
    stacked: list[Array], squares: Array, segments: list[np.ndarray], integer: Any
) -> Array:
    """The non-finite elements over each segment's rows. A sum of squares is finite unless its
    row holds NaN or Inf (or it overflows): the elements are counted only where the sum of all is
    not, so that a finite step pays one reduction per array."""

    def counted(operands: list[Array]) -> Array:
        per_row = jnp.concatenate([(~jnp.isfinite(x)).sum(axis=1, dtype=integer) for x in operands])
        return _segment_reduce(per_row, segments)

    def finite(operands: list[Array]) -> Array:
        return jnp.zeros((len(segments),), integer)

    return jax.lax.cond(jnp.isfinite(squares.sum()), finite, counted, stacked)
