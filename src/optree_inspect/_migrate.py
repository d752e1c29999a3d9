"""`migrate`: a state carried across an optimizer change, matched by meaning (docs/migrate.md).

Each optax state node of the new state takes the node of the old state of the same state type: the
one at the same place among the named containers around it (partition labels, `named_chain` names,
a `TrainState`'s fields), else the one of the same rank among the nodes of that type. Chain
positions and wrappers (`inject_hyperparams`, `MultiSteps`, `apply_if_finite`, `masked`) do not
count, so adding or removing one moves nothing. Inside a matched state, leaves match by field and
parameter path; outside every state, by path.

>>> import jax.numpy as jnp, optax, optree_inspect as oi
>>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
>>> old = optax.adam(1e-3).init(params)
>>> new = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init(params)
>>> print(oi.migrate(old, new))
[1][0].count: carried from [0].count
[1][0].mu: carried 2 leaves from [0].mu
[1][0].nu: carried 2 leaves from [0].nu
"""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
from jaxtyping import PyTree

from ._cache import index_and_leaves
from ._cast import cast_leaf, stands_as
from ._errors import InvalidArgumentError, LeafTypeError, MigrationError, bounded, listing, raised_here
from ._index import StructureIndex
from ._keys import KeyPath, path_text
from ._leaf import is_abstract, is_concrete
from ._listing import Listing
from ._naming import shortest_query
from ._optax.fields import STATE_FIELDS
from ._optax.names import COUNTER_NAMES, INJECT_STATE_NAMES, SCHEDULE_BOOKKEEPING
from ._optax.states import scheduled_slot_on
from ._resolve import find
from ._treekit import name_of

MigrationKind = Literal["carried", "cast", "counter", "initialised", "dropped"]
KINDS: tuple[str, ...] = ("carried", "cast", "counter", "initialised", "dropped")

STARTS_AT_ZERO = frozenset({"mini_step"})
"""Counters that count the accumulation in progress (`MultiSteps`' `mini_step`): carried with
the accumulators, else `like`'s value, never the old step."""
ACCUMULATORS = frozenset({"acc_grads"})
"""Params-shaped fields that start at zero whatever the step (`MultiSteps`' accumulated
gradients): a state whose only fresh fields these are keeps counting from the old step."""
KEEPS_LIKE = frozenset({"notfinite_count", "last_finite", "total_notfinite", "hyperparams"})
"""Fields whose values are the new optimizer's (`like`'s) even where the old state has them:
`apply_if_finite`'s bookkeeping, and injected hyperparameters (the new optimizer's values)."""
MAX_ROWS = 120


class MigrationRow(NamedTuple):
    """One region of the new state and what `migrate` did there."""

    kind: MigrationKind
    """`carried` (the old values, same dtype), `cast` (the old values in the new dtype), `counter`
    (a step counter set from the old step), `initialised` (`like`'s values), `dropped` (a part
    of the old state that carries nowhere, named in `drop=` or bookkeeping of a removed wrapper)."""
    path: KeyPath
    """The region's node in the new state (in the old state for `dropped`)."""
    query: str
    """A query that selects that node there."""
    source: KeyPath | None
    """The node of the old state the values came from, or None."""
    summary: str
    """The row as printed."""


class Migration(Listing[MigrationRow]):
    """What `migrate` did: `.state`, the new state, and `.rows`, one a region. Print it before using
    `.state` to see the plan (a dry run)."""

    shown, empty, more = MAX_ROWS, "Nothing to carry over.", "... {count:,} more regions"

    def __init__(self, state: Any, rows: Iterable[MigrationRow]) -> None:
        super().__init__(rows)
        self.state = state

    @property
    def rows(self) -> tuple[MigrationRow, ...]:
        return self._items

    def _line(self, item: MigrationRow) -> str:
        return item.summary

    def _header(self) -> str:
        counts = {kind: sum(row.kind == kind for row in self._items) for kind in KINDS}
        parts = ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
        return f"Migration({parts or 'nothing'})"

    def __bool__(self) -> bool:
        return True


class _Leaf(NamedTuple):
    """A leaf of one tree as `migrate` matches it: its position among the leaves, its node, its
    innermost state (node number, or -1 outside every state) and its names below that state (or
    from the root): the state's field first."""

    position: int
    node: int
    state: int
    names: tuple[Any, ...]


@raised_here
def migrate(
    old: PyTree,
    like: PyTree,
    /,
    *,
    rules: Mapping[str, str] | None = None,
    drop: bool | str | Iterable[str] | None = None,
    step: int | None = None,
) -> Migration:
    """`old` carried into the structure of `like` (the new optimizer's `tx.init(params)`, or a
    container holding it), matched by meaning (see the module docstring and docs/migrate.md).

    Every leaf of the result is `like`'s leaf's type, dtype, weak type, shape and sharding, holding
    the old value cast as `set` casts it; a counter of a state the old one lacks takes the old step
    (`step=` overrides it); anything else `like` alone has keeps `like`'s value. A part of `old`
    that carries nowhere is a `MigrationError` unless `drop=` names it (queries over `old`, or
    True); a removed wrapper's bookkeeping (counters, injected hyperparameters) is listed as
    dropped. Neither input is modified.
    """
    rules = _checked_rules(rules)
    drop_all, drop_queries = _checked_drop(drop)
    step = _checked_step(step)
    old_index, old_leaves = index_and_leaves(old)
    like_index, like_leaves = index_and_leaves(like)
    named = _named_nodes(old, old_index, drop_queries)
    old_nodes, like_nodes = _states_and_names(old_index), _states_and_names(like_index)
    every_old = _leaves(old_index, old_nodes)
    old_side = [leaf for leaf in every_old if not named[leaf.node]]
    like_side = _leaves(like_index, like_nodes)
    pairs = _pair_states(
        old_index, like_index, named, _with_moments(old_side) | _with_moments(like_side, True)
    )
    sources = _sources(old_side, like_side, pairs, rules, old_index, like_index)
    _refuse_abstract(like_side, sources, like_leaves, old_leaves, like_index)
    fresh, anew = _fresh_states(like_side, sources, like_index)
    restarted = _accumulating_anew(like_side, sources)
    old_step = _old_step(old_index, old_side, old_leaves) if step is None else step
    kinds: list[MigrationKind] = []
    values: list[Any] = []
    for leaf in like_side:
        source = sources.get(leaf.position)
        kind, value = _carry(
            leaf, source, like_index, like_leaves, old_leaves, old_step, fresh, anew, restarted
        )
        kinds.append(kind)
        values.append(value)
    _keep_scheduled(like, like_index, like_side, sources, kinds, values, old_leaves)
    used = set(sources.values())
    dropped = [leaf for leaf in every_old if leaf.position not in used]
    if not drop_all:
        _check_dropped(old_index, [leaf for leaf in dropped if not named[leaf.node]])
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), values)
    rows = _rows(
        (like_index, like_nodes[1]),
        (old_index, old_nodes[1]),
        like_side,
        kinds,
        sources,
        every_old,
        like_leaves,
        old_leaves,
    )
    rows += _dropped_rows(old_index, dropped)
    return Migration(state, rows)


def _checked_drop(drop: Any) -> tuple[bool, list[str]]:
    """Whether everything may be dropped, and the queries of what may."""
    if drop is None or drop is False:
        return False, []
    if drop is True:
        return True, []
    if isinstance(drop, str):
        return False, [drop]
    if isinstance(drop, list | tuple | set | frozenset) and all(isinstance(q, str) for q in drop):
        return False, list(drop)
    raise InvalidArgumentError(
        "drop= takes True, a query or a list of queries over the old state, got a "
        f"{bounded(type(drop).__name__, 60)}."
    )


def _checked_step(step: Any) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise InvalidArgumentError(f"step= takes an int of 0 or more, got {bounded(repr(step), 60)}.")
    return int(step)


def _named_nodes(old: Any, index: StructureIndex, queries: list[str]) -> list[bool]:
    """Which nodes of `old` are at or below a node that a `drop=` query selects."""
    named = [False] * len(index)
    for query in queries:
        found = [match.path for match in find(old, query, variables=True)]
        if not found:
            raise MigrationError(
                f"drop= names {bounded(repr(query), 100)}, which selects nothing in the old state."
            )
        for path in found:
            node = index.number_of(path)
            if node is not None:
                named[node : node + index.sizes[node]] = [True] * index.sizes[node]
    return named


def _checked_rules(rules: Mapping[str, str] | None) -> dict[str, str]:
    if rules is None:
        return {}
    if not isinstance(rules, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in rules.items()
    ):
        raise InvalidArgumentError("rules= takes a dict of str queries, {new_query: old_query}.")
    return dict(rules)


def _leaves(index: StructureIndex, nodes: tuple[list[int], list[tuple[Any, ...]]]) -> list[_Leaf]:
    """Each leaf with its innermost state and its names below it (`nodes`, from
    `_states_and_names`)."""
    states, names = nodes
    return [
        _Leaf(position, node, states[node], names[node]) for position, node in enumerate(index.leaf_nodes)
    ]


def _states_and_names(index: StructureIndex) -> tuple[list[int], list[tuple[Any, ...]]]:
    """Each node's innermost state (-1 outside every state) and its names below it (an nnx
    Variable's `value` left out, digit strings read as the ints orbax saved them from); one pass
    over the nodes."""
    states = [-1] * len(index)
    names: list[tuple[Any, ...]] = [()] * len(index)
    parents, state_names, variables = index.parents, index.state_names, index.variables
    for node in range(1, len(index)):
        parent = parents[node]
        if state_names[parent] is not None:
            states[node], above = parent, ()
        else:
            states[node], above = states[parent], names[parent]
        names[node] = above if variables[parent] else (*above, _name(index, node))
    return states, names


def _name(index: StructureIndex, node: int) -> Any:
    key = index.keys[node]
    name = name_of(key) if key is not None else None
    return int(name) if isinstance(name, str) and _spells_int(name) else name


def _spells_int(text: str) -> bool:
    """Whether `text` is an int as orbax writes one (`'0'`, `'12'`; not `'01'` or `'١'`)."""
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


def _context(index: StructureIndex, node: int) -> tuple[Any, ...]:
    """The names of the containers around a state: dict keys and fields that are not chain
    positions (ints) or wrapper fields (`inner_state`), so that adding a wrapper changes nothing."""
    names = []
    for current in [*index.ancestors(node)[1:], node]:
        name = _name(index, current)
        if isinstance(name, str) and name not in STATE_FIELDS and name != "inner_states":
            names.append(name)
    return tuple(names)


def _state_names(index: StructureIndex, node: int) -> tuple[str, ...]:
    return index.restored_names.get(node) or (index.state_names[node] or "",)


def _with_moments(side: list[_Leaf], like: bool = False) -> set[tuple[bool, int]]:
    """The states (tagged with the side: True for `like`) that hold moments: a params-shaped field
    other than accumulators or injected hyperparameters."""
    return {
        (like, leaf.state)
        for leaf in side
        if leaf.state >= 0 and len(leaf.names) > 1 and leaf.names[0] not in KEEPS_LIKE | ACCUMULATORS
    }


def _pair_states(
    old: StructureIndex, like: StructureIndex, named: list[bool], with_moments: set[tuple[bool, int]]
) -> dict[int, int]:
    """Each state node of `like` with the node of `old` it takes: of the same state type, at the
    same place among named containers, else of the same rank among those of that type left over.
    Where the numbers left over differ for states that hold moments, which goes where is not
    known: a `MigrationError` (name the old ones that go in `drop=`); wrappers' states (their
    counters and accumulators) pair by rank. States without leaves (`EmptyState`) carry nothing
    and are not paired."""
    old_states = [
        n for n in range(len(old)) if old.state_names[n] is not None and old.leaf_counts[n] and not named[n]
    ]
    like_states = [n for n in range(len(like)) if like.state_names[n] is not None and like.leaf_counts[n]]
    pairs: dict[int, int] = {}
    taken: set[int] = set()
    for node in like_states:
        name = like.state_names[node]
        context = _context(like, node)
        candidates = [n for n in old_states if name in _state_names(old, n) and _context(old, n) == context]
        if len(candidates) == 1 and candidates[0] not in taken:
            pairs[node] = candidates[0]
            taken.add(candidates[0])
    left_like: dict[str, list[int]] = {}
    left_old: dict[str, list[int]] = {}
    for node in like_states:
        if node not in pairs:
            left_like.setdefault(like.state_names[node] or "", []).append(node)
    for node in old_states:
        if node not in taken:
            for name in _state_names(old, node)[:1]:
                left_old.setdefault(name, []).append(node)
    for name, nodes in left_like.items():
        olds = left_old.get(name, [])
        moments = any((True, n) in with_moments for n in nodes) or any(
            (False, n) in with_moments for n in olds
        )
        if olds and len(olds) != len(nodes) and moments:
            where_old = ", ".join(path_text(old.path(n)) for n in olds[:4])
            where_new = ", ".join(path_text(like.path(n)) for n in nodes[:4])
            raise MigrationError(
                f"{len(olds)} {name} of the old state ({where_old}) and {len(nodes)} of the new one "
                f"({where_new}) stand at no common named place, and their numbers differ: which "
                "carries into which is not known. Name the old ones that go in drop=."
            )
        pairs.update(zip(nodes, olds, strict=False))
    return pairs


def _sources(
    old_side: list[_Leaf],
    like_side: list[_Leaf],
    pairs: dict[int, int],
    rules: dict[str, str],
    old_index: StructureIndex,
    like_index: StructureIndex,
) -> dict[int, int]:
    """The old leaf (position) each leaf of `like` takes its value from, where one does."""
    by_place = {(leaf.state, leaf.names): leaf.position for leaf in old_side}
    # a parameter moved to another partition group: its moments in a state of the same type
    by_type: dict[tuple[str, tuple[Any, ...]], list[int]] = {}
    for leaf in old_side:
        if leaf.state >= 0 and len(leaf.names) > 1:
            for name in _state_names(old_index, leaf.state):
                by_type.setdefault((name, leaf.names), []).append(leaf.position)
    taken: set[int] = set()
    compiled = [(_pattern(new), _pattern(old), new, old) for new, old in rules.items()]
    matched_new: set[str] = set()
    matched_old: set[str] = set()
    sources: dict[int, int] = {}
    # each leaf's names in the old state: as a rule renames them (the first whose new side
    # matches), else its own
    waiting: list[tuple[_Leaf, list[tuple[tuple[Any, ...], str | None]]]] = []
    for leaf in like_side:
        state = pairs.get(leaf.state, -1) if leaf.state >= 0 else -1
        spellings: list[tuple[tuple[Any, ...], str | None]] = []
        for new_pattern, old_pattern, new_text, old_text in compiled:
            renamed = _renamed(leaf.names, new_pattern, old_pattern, old_text)
            if renamed is not None:
                matched_new.add(new_text)
                spellings.append((renamed, old_text))
                break
        spellings.append((leaf.names, None))
        found = None
        if leaf.state < 0 or state >= 0:
            found = next(((n, rule) for n, rule in spellings if (state, n) in by_place), None)
        if found is not None:
            source = by_place[(state, found[0])]
            sources[leaf.position] = source
            taken.add(source)
            if found[1] is not None:
                matched_old.add(found[1])
        elif leaf.state >= 0 and len(leaf.names) > 1:
            waiting.append((leaf, spellings))
    # then what no state of the same place holds: a parameter that moved to another group
    for leaf, spellings in waiting:
        name = like_index.state_names[leaf.state] or ""
        for names, rule in spellings:
            moved = next((p for p in by_type.get((name, names), []) if p not in taken), None)
            if moved is not None:
                sources[leaf.position] = moved
                taken.add(moved)
                if rule is not None:
                    matched_old.add(rule)
                break
    unmatched = [
        f"{new!r}: {old!r}" for new, old in rules.items() if new not in matched_new or old not in matched_old
    ]
    if unmatched:
        raise MigrationError(
            "These rules pair no leaf of the new state with one of the old state (each side of a rule "
            "matches names from a state's field, or from the root outside every state):\n"
            + listing(unmatched)
        )
    return sources


def _pattern(text: str) -> list[str]:
    return text.split(".")


def _renamed(names: tuple[Any, ...], new: list[str], old: list[str], old_text: str) -> tuple[Any, ...] | None:
    """`names` with its last `len(new)` names, which `new` matches, spelled as `old` (each `*` of
    `old` takes what the same `*` of `new` matched), or None where `new` does not match them."""
    if len(names) < len(new):
        return None
    tail = names[len(names) - len(new) :]
    captured: list[Any] = []
    for name, component in zip(tail, new, strict=True):
        if not fnmatch.fnmatchcase(str(name), component):
            return None
        if component == "*":
            captured.append(name)
    stars = iter(captured)
    spelled: list[Any] = []
    for component in old:
        if component == "*":
            spelled.append(next(stars, "*"))
        else:
            spelled.append(int(component) if _spells_int(component) else component)
    return (*names[: len(names) - len(new)], *spelled)


def _old_step(index: StructureIndex, side: list[_Leaf], leaves: list[Any]) -> Any:
    """The old state's step: its first `count` (in tree order) outside schedule bookkeeping (an
    nnx Variable's counts as the array it holds)."""
    for leaf in side:
        if leaf.state >= 0 and leaf.names == ("count",) and not index.hidden[leaf.node]:
            return leaves[leaf.position]
    return None


def _fresh_states(
    like_side: list[_Leaf], sources: dict[int, int], index: StructureIndex
) -> tuple[set[int], set[int]]:
    """The states of `like` with moments that start anew (a params-shaped field with nothing to
    take), whose counters without a counterpart start anew too; and those all of whose moments
    start anew, whose counters start anew even where the old state has one (an adam state
    that held no parameters before), or bias correction would be lost."""
    fresh: set[int] = set()
    carried: set[int] = set()
    for leaf in like_side:
        if (
            leaf.state >= 0
            and len(leaf.names) > 1
            and leaf.names[0] not in KEEPS_LIKE | ACCUMULATORS
            and not index.hidden[leaf.node]
        ):
            (carried if leaf.position in sources else fresh).add(leaf.state)
    return fresh, fresh - carried


def _accumulating_anew(like_side: list[_Leaf], sources: dict[int, int]) -> set[int]:
    """The states of `like` whose accumulators (`MultiSteps`' `acc_grads`) take nothing from
    `old`, in part or whole: their `mini_step` starts anew with them."""
    return {
        leaf.state
        for leaf in like_side
        if leaf.state >= 0
        and leaf.names[:1]
        and leaf.names[0] in ACCUMULATORS
        and leaf.position not in sources
    }


def _refuse_abstract(
    like_side: list[_Leaf],
    sources: dict[int, int],
    like_leaves: list[Any],
    old_leaves: list[Any],
    index: StructureIndex,
) -> None:
    """Abstract old leaves (`load(path)` without `arrays=True`, `jax.eval_shape`) hold no values
    to carry into concrete leaves of `like`."""
    abstract = [
        leaf
        for leaf in like_side
        if leaf.position in sources
        and is_abstract(old_leaves[sources[leaf.position]])
        and not is_abstract(like_leaves[leaf.position])
    ]
    if abstract:
        raise LeafTypeError(
            f"The old state holds abstract leaves (jax.ShapeDtypeStruct) where the new one holds "
            f"values: {len(abstract):,}, the first for {path_text(index.path(abstract[0].node))}. They "
            "hold no values to carry: load the arrays with load(path, arrays=True)."
        )


def _carry(
    leaf: _Leaf,
    source: int | None,
    like_index: StructureIndex,
    like_leaves: list[Any],
    old_leaves: list[Any],
    old_step: Any,
    fresh: set[int],
    anew: set[int],
    restarted: set[int],
) -> tuple[MigrationKind, Any]:
    """What the leaf of the new state holds, and how it got it."""
    new = like_leaves[leaf.position]
    field = leaf.names[0] if leaf.names else None
    counter = leaf.state >= 0 and len(leaf.names) == 1 and field in COUNTER_NAMES
    if leaf.state >= 0 and (field in KEEPS_LIKE or (counter and leaf.state in anew)):
        return "initialised", new
    if field in STARTS_AT_ZERO and (source is None or leaf.state in restarted):
        return "initialised", new
    if source is not None:
        return _taken(new, old_leaves[source], like_index.path(leaf.node))
    if counter and leaf.state not in fresh:
        path = like_index.path(leaf.node)
        if old_step is None:
            raise MigrationError(
                f"The counter at {path_text(path)} has no counterpart in the old state, and the old "
                "state has no `count` to take the step from: pass step=."
            )
        if is_abstract(old_step) and not is_abstract(new):
            raise LeafTypeError(
                f"The counter at {path_text(path)} takes the old step, but the old state's `count` is "
                "abstract (jax.ShapeDtypeStruct): load the arrays with load(path, arrays=True), or "
                "pass step=."
            )
        return "counter", cast_leaf(new, old_step, path, fill=True)
    return "initialised", new


def _taken(new: Any, value: Any, path: KeyPath) -> tuple[MigrationKind, Any]:
    """The old `value` in place of `new`, cast as `set` casts it."""
    if stands_as(value, new):
        return "carried", value
    cast = cast_leaf(new, value, path, fill=True)
    same = getattr(cast, "dtype", None) == getattr(value, "dtype", None)
    return ("carried" if same or is_abstract(cast) else "cast"), cast


def _keep_scheduled(
    like: Any,
    index: StructureIndex,
    like_side: list[_Leaf],
    sources: dict[int, int],
    kinds: list[MigrationKind],
    values: list[Any],
    old_leaves: list[Any],
) -> None:
    """An injected hyperparameter that a schedule sets holds the value the update at step
    `count - 1` used (`describe` says so): where the inject state's count goes on from the old
    step, the old state's value stays (the next update sets the new schedule's), not `like`'s
    for step 0."""
    for leaf in like_side:
        source = sources.get(leaf.position)
        if source is None or leaf.state < 0 or leaf.names[:1] != ("hyperparams",):
            continue
        path = index.path(leaf.node)
        slot = scheduled_slot_on(like, path)
        counter = None if slot is None else index.number_of(slot.field_path("count"))
        if counter is None or not index.leaf_counts[counter]:
            continue
        step = values[index.leaf_starts[counter]]
        if is_concrete(step) and np.ndim(step) == 0 and int(np.asarray(step)) != 0:
            kinds[leaf.position], values[leaf.position] = _taken(
                values[leaf.position], old_leaves[source], path
            )


def _check_dropped(index: StructureIndex, dropped: list[_Leaf]) -> None:
    """Raise for the dropped leaves of `old` (those `drop=` does not name) that are not a removed
    wrapper's bookkeeping."""
    lost = [leaf for leaf in dropped if not _bookkeeping(index, leaf)]
    if lost:
        regions = _regions(index, lost)
        lines = [
            f"{path_text(index.path(node))} ({_leaves_text(count)})  ->  drop={shortest_query(index, node)!r}"
            for node, count in regions
        ]
        raise MigrationError(
            f"{len(lost):,} leaves of the old state carry nowhere in the new one. Name what may go in "
            f"drop= (or drop=True):\n{listing(lines)}"
        )


def _leaves_text(count: int) -> str:
    return f"{count:,} lea{'ves' if count != 1 else 'f'}"


def _bookkeeping(index: StructureIndex, leaf: _Leaf) -> bool:
    """A removed wrapper's bookkeeping, listed as dropped without `drop=`: a counter, an injected
    hyperparameter or its schedule's state, `apply_if_finite`'s counts."""
    if leaf.state < 0 or not leaf.names:
        return False
    field = leaf.names[0]
    state_name = index.state_names[leaf.state]
    return (
        index.hidden[leaf.node]
        or (len(leaf.names) == 1 and (field in COUNTER_NAMES or field in KEEPS_LIKE))
        or (state_name in INJECT_STATE_NAMES and field in ("hyperparams", SCHEDULE_BOOKKEEPING))
    )


def _regions(index: StructureIndex, leaves: list[_Leaf]) -> list[tuple[int, int]]:
    """The leaves in order, grouped as `_groups` groups them (all alike), each group as its node
    with how many leaves it holds."""
    return [(node, len(members)) for node, members in _groups(index, leaves, [None] * len(leaves))]


def _groups(index: StructureIndex, leaves: list[_Leaf], labels: list[Any]) -> list[tuple[int, list[_Leaf]]]:
    """`leaves` (in tree order) in groups, each under one node that holds those leaves and no
    other leaf of the tree: each leaf's highest ancestor, up to its state's field (or itself
    outside every state, `_region_node`), all of whose leaves are among `leaves` with the same
    label; consecutive leaves under one such node form a group."""
    mark = object()
    label_at: list[Any] = [mark] * len(index.leaf_nodes)
    for leaf, label in zip(leaves, labels, strict=True):
        label_at[leaf.position] = (label,)
    run_end = list(range(1, len(label_at) + 1))  # where the run of equal labels through i ends
    for i in range(len(label_at) - 2, -1, -1):
        if label_at[i] is not mark and label_at[i] == label_at[i + 1]:
            run_end[i] = run_end[i + 1]
    starts, counts, parents = index.leaf_starts, index.leaf_counts, index.parents
    groups: list[tuple[int, list[_Leaf]]] = []
    for leaf in leaves:
        region, node = _region_node(index, leaf), leaf.node
        while node != region:
            parent = parents[node]
            if run_end[starts[parent]] < starts[parent] + counts[parent]:
                break
            node = parent
        if groups and groups[-1][0] == node:
            groups[-1][1].append(leaf)
        else:
            groups.append((node, [leaf]))
    return groups


def _region_node(index: StructureIndex, leaf: _Leaf) -> int:
    """The node a leaf's row stands under: its state's field, or the leaf itself."""
    if leaf.state < 0 or len(leaf.names) <= 1:
        return leaf.node if not index.variables[index.parents[leaf.node]] else index.parents[leaf.node]
    node = leaf.node
    while index.parents[node] != leaf.state:
        node = index.parents[node]
    return node


def _rows(
    like_named: tuple[StructureIndex, list[tuple[Any, ...]]],
    old_named: tuple[StructureIndex, list[tuple[Any, ...]]],
    like_side: list[_Leaf],
    kinds: list[MigrationKind],
    sources: dict[int, int],
    old_side: list[_Leaf],
    like_leaves: list[Any],
    old_leaves: list[Any],
) -> list[MigrationRow]:
    """A row for each group of `like`'s leaves (`_groups`), with the node of `old` they came from;
    each index with its nodes' names (`_states_and_names`)."""
    (like, like_names), (old, old_names) = like_named, old_named
    rows = []

    def source_region(leaf: _Leaf) -> int | None:
        source = sources.get(leaf.position)
        return None if source is None else _region_node(old, old_side[source])

    labels = [(kinds[leaf.position], source_region(leaf)) for leaf in like_side]
    for node, members in _groups(like, like_side, labels):
        kind = kinds[members[0].position]
        path = like.path(node)
        found = [old_side[sources[m.position]].node for m in members if m.position in sources]
        region, source = source_region(members[0]), None
        if region is not None and len(found) == len(members):  # from one region (the label)
            source = old.path(_source_node(old, old_names, region, found, len(like_names[node])))
        count = len(members)
        many = "" if like.is_leaf[node] or like.variables[node] else f" {_leaves_text(count)}"
        where = f" from {path_text(source)}" if source is not None else ""
        if kind == "initialised":
            differ = [m.names[-1] for m in members if _differs(m, sources, like_leaves, old_leaves)]
            note = f"; not the old state's: {', '.join(map(str, differ[:8]))}" if differ else ""
            what = f"initialised{many} (the new state's{note})"
        elif kind == "counter":
            what = f"counter{many} set to the old step"
        else:
            what = f"{kind}{many}{where}"
        rows.append(
            MigrationRow(
                kind, path, shortest_query(like, node) if node else "", source, f"{path_text(path)}: {what}"
            )
        )
    return rows


def _source_node(
    old: StructureIndex, names: list[tuple[Any, ...]], region: int, found: list[int], depth: int
) -> int:
    """The node of `old` that a row's leaves came from: the one above the first leaf's source
    with as many names as the row's node has (so that each leaf stands below both alike), where
    it holds every source in its region; else the deepest node that holds them all."""
    node = found[0]
    while node != region and len(names[old.parents[node]]) >= depth:
        node = old.parents[node]
    holds = all(node <= n < node + old.sizes[node] for n in found)
    if len(names[node]) == depth and holds and region <= node < region + old.sizes[region]:
        return node
    return _common_ancestor(old, region, min(found), max(found))


def _differs(leaf: _Leaf, sources: dict[int, int], like_leaves: list[Any], old_leaves: list[Any]) -> bool:
    """Whether a leaf kept from `like` (an injected hyperparameter) differs from the old value it
    stands for; concrete scalars only."""
    source = sources.get(leaf.position)
    if source is None:
        return False
    new, old = like_leaves[leaf.position], old_leaves[source]
    if not (is_concrete(new) and is_concrete(old)) or np.ndim(new) or np.ndim(old):
        return False
    return bool(np.asarray(new) != np.asarray(old))


def _common_ancestor(index: StructureIndex, region: int, first: int, last: int) -> int:
    """The deepest node at or below `region` that holds the leaves `first` to `last` (an nnx
    Variable for its own leaf)."""
    if first == last:
        parent = index.parents[first]
        return parent if index.variables[parent] else first
    above = set(index.ancestors(first))
    node = last
    while node not in above and node != region:
        node = index.parents[node]
    return node


def _dropped_rows(index: StructureIndex, dropped: list[_Leaf]) -> list[MigrationRow]:
    rows = []
    for node, count in _regions(index, dropped):
        path = index.path(node)
        many = "" if index.is_leaf[node] or index.variables[node] else f" {_leaves_text(count)}"
        rows.append(
            MigrationRow(
                "dropped",
                path,
                shortest_query(index, node) if node else "",
                path,
                f"{path_text(path)}: dropped{many} (in the old state)",
            )
        )
    return rows
