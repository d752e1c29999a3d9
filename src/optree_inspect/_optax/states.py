"""What is special about optax states: injected hyperparameters, their schedules, counters."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

import optax
import optax.contrib
from jax.tree_util import DictKey, GetAttrKey

from .._errors import QuerySyntaxError
from .._index import StructureIndex
from .._keys import KeyPath
from .._match import match
from .._naming import shortest_query
from .._paths import child_at
from .._query import PatternQuery, parse_query
from .._registry import children_with_keys
from .fields import (
    OUTSIDE,
    child_where,
    children_where,
    field_name,
    field_of,
    is_inject_state_name,
    state_name,
)
from .names import (
    COUNTER_NAMES,
    HYPERPARAMETER_FACTORIES,
    HYPERPARAMETER_NAMES,
    INJECT_STATE_NAMES,
    SCHEDULE_BOOKKEEPING,
    optax_names,
)


def inject_state_nodes(index: StructureIndex) -> list[int]:
    """The nodes of `index` that are inject states (typed or restored), in pre-order."""
    return sorted(number for name in INJECT_STATE_NAMES for number in index.by_state_name.get(name, []))


def hyperparameter_nodes(index: StructureIndex) -> list[int]:
    """The injected hyperparameters of `index` (the entries of each inject state's `hyperparams`),
    in tree order."""
    nodes: list[int] = []
    for state in inject_state_nodes(index):
        for field in index.children(state):
            if index.texts[field] == "hyperparams":
                nodes.extend(index.children(field))
    return nodes


def injected_names(index: StructureIndex) -> list[str]:
    """The names of the hyperparameters held by the inject states of `index`, in tree order."""
    return list(dict.fromkeys(index.texts[node] for node in hyperparameter_nodes(index)))


def protected_nodes(index: StructureIndex) -> set[int]:
    """Nodes `describe` never folds (but to fit its line budget): the injected hyperparameters and
    their schedules' states."""
    protected: set[int] = set()
    for state in inject_state_nodes(index):
        for field in index.children(state):
            if index.texts[field] in ("hyperparams", SCHEDULE_BOOKKEEPING):
                protected.update(range(field, field + index.sizes[field]))
    return protected


def is_counter(index: StructureIndex, node: int) -> bool:
    """A counter field of an optax state: a field named like a counter of a state type that optax
    defines, typed or restored, whatever holds it (never a parameter called `count` or `t`, even in
    an eqx Module)."""
    return (
        node > 0
        and field_name(index.keys[node]) in COUNTER_NAMES
        and index.state_names[index.parents[node]] is not None
        and not index.hidden[node]
    )


def bookkeeping_hint(index: StructureIndex, query: PatternQuery) -> str | None:
    """For a pattern that misses: the node it would select inside schedule bookkeeping, if any."""
    if not index.has_hidden or query.enters_hidden:
        return None
    inside = [n for n in match(index, query.components, True) if index.hidden[n]]
    if not inside:
        return None
    return (
        f"It matches schedule bookkeeping, which a pattern enters only when it names "
        f"{SCHEDULE_BOOKKEEPING!r}: {shortest_query(index, inside[0])!r}."
    )


def inject_example(name: str) -> str:
    """How to make `name` settable: `inject_hyperparams` of an optax factory that takes it."""
    where = HYPERPARAMETER_FACTORIES.get(name, "adamw")
    module, _, attribute = where.rpartition(".")
    factory = getattr(optax.contrib if module else optax, attribute, None)
    if factory is None:  # an older optax without that factory
        where, factory = "adamw", optax.adamw
    required = [
        parameter.name
        for parameter in inspect.signature(factory).parameters.values()
        if parameter.default is parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    arguments = ", ".join(f"{argument}=..." for argument in dict.fromkeys([*required, name]))
    return f"optax.inject_hyperparams(optax.{where})({arguments})"


def missing_hyperparameter_hint(
    index: StructureIndex, name: str, optimizer_given: bool = False
) -> str | None:
    """What to say when the hyperparameter `name` is not in the state, or None if not one. A name
    users type for an optax name (`lr`, `beta1`) is answered for optax's name."""
    if name not in HYPERPARAMETER_NAMES:
        meant = [other for other in optax_names(name) if other in HYPERPARAMETER_NAMES]
        if not meant:
            return None
        calls = " and ".join(map(repr, meant))
        return f"optax calls it {calls}. " + (
            missing_hyperparameter_hint(index, meant[0], optimizer_given) or ""
        )
    held = injected_names(index)
    example = inject_example(name)
    if optimizer_given:
        return (
            f"{name!r} is an optax hyperparameter, but neither the state nor the optimizer holds one "
            f"that can be read exactly. To make it readable and settable, inject it:\n  >>> {example}"
        )
    read = f"To read it from the optimizer, pass it: oi.get(state, {name!r}, optimizer=tx). "
    if not held:
        return (
            f"{name!r} is an optax hyperparameter, but this state holds none: an optimizer keeps its "
            f"hyperparameters in its closures unless they are injected. {read}To change it, build the "
            f"optimizer with\n  >>> {example}"
        )
    return (
        f"{name!r} is an optax hyperparameter, but the injected ones here are "
        f"{', '.join(held[:12])}. {read}To change it, inject it too:\n  >>> {example}"
    )


class ScheduledSlot(NamedTuple):
    """An injected hyperparameter that a schedule recomputes at every update."""

    name: Any
    """Its key in `hyperparams` (and in `hyperparams_states`)."""
    state_path: KeyPath
    """The path of the inject state that holds it."""
    restored: bool = False
    """Whether the inject state is a restored dict (its fields are dict keys, not attributes)."""

    def field_path(self, field: str) -> KeyPath:
        """The path of a field of the inject state."""
        return (*self.state_path, DictKey(field) if self.restored else GetAttrKey(field))

    @property
    def value_path(self) -> KeyPath:
        return (*self.field_path("hyperparams"), DictKey(self.name))

    @property
    def schedule_path(self) -> KeyPath:
        return (*self.field_path(SCHEDULE_BOOKKEEPING), DictKey(self.name))


def _inject_slots(node: Any, name: str | None, path: KeyPath) -> list[ScheduledSlot]:
    """The scheduled hyperparameters of `node`, the state `name` at `path` (none unless inject)."""
    if not is_inject_state_name(name):
        return []
    schedules = field_of(node, SCHEDULE_BOOKKEEPING) or {}
    restored = isinstance(node, Mapping)
    return [ScheduledSlot(k, path, restored) for k in field_of(node, "hyperparams") or {} if k in schedules]


def scheduled_slot_on(tree: Any, path: KeyPath) -> ScheduledSlot | None:
    """The scheduled hyperparameter that an edit at `path` would overwrite, if any: the path is
    `hyperparams` of an inject state with a scheduled entry, or that entry, or inside it (the
    `.value` of an nnx Variable). O(len(path)): it walks only the nodes on the path."""
    node, where = tree, OUTSIDE
    for depth, key in enumerate(path):
        name = state_name(node, where)
        if is_inject_state_name(name) and field_name(key) == "hyperparams":
            slots = _inject_slots(node, name, path[:depth])
            if depth + 1 == len(path):
                return slots[0] if slots else None
            entry = path[depth + 1]
            return next((s for s in slots if isinstance(entry, DictKey) and s.name == entry.key), None)
        where = child_where(node, name, where, key)
        node = child_at(node, key)
    return None


def where_at(tree: Any, path: KeyPath) -> int:
    """Where the node at `path` is, for recognising restored states (`fields.children_where`)."""
    node, where = tree, OUTSIDE
    for key in path:
        where = child_where(node, state_name(node, where), where, key)
        node = child_at(node, key)
    return where


def scheduled_slots_under(subtree: Any, path: KeyPath, where: int = OUTSIDE) -> list[ScheduledSlot]:
    """The scheduled hyperparameters of the inject states in `subtree`, the node at `path`, which
    is `where` (`where_at`).

    O(size of the subtree): only the edited part of the tree is walked.
    """
    slots: list[ScheduledSlot] = []
    stack: list[tuple[KeyPath, Any, int]] = [((), subtree, where)]
    while stack:
        relative, node, node_where = stack.pop()
        name = state_name(node, node_where)
        slots.extend(_inject_slots(node, name, (*path, *relative)))
        pairs = children_with_keys(node) or []
        wheres = children_where(name, node_where, pairs)
        for (key, child), child_where_ in zip(reversed(pairs), reversed(wheres), strict=True):
            stack.append(((*relative, key), child, child_where_))
    return slots


def schedule_step_query(index: StructureIndex, slot: ScheduledSlot) -> str:
    """A query for the schedule's step counter, `hyperparams_states.<name>.count` when unique."""
    schedule = index.number_of(slot.schedule_path)
    assert schedule is not None
    step = next((c for c in index.children(schedule) if index.texts[c] == "count"), None)
    target = schedule if step is None else step
    explicit = f"hyperparams_states.{slot.name}" + ("" if step is None else ".count")
    try:
        pattern = parse_query(explicit)
    except QuerySyntaxError:  # a name that is not a pattern component
        return shortest_query(index, target)
    if isinstance(pattern, PatternQuery) and pattern.nodes(index) == (target,):
        return explicit
    return shortest_query(index, target)
