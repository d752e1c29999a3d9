"""What is special about optax states: injected hyperparameters and their schedules."""

from __future__ import annotations

from typing import Any, NamedTuple

from jax.tree_util import DictKey, GetAttrKey

from ._query import KeyPath
from ._tree import INJECT_STATE_NAMES, StructureIndex, child_at, is_namedtuple_type, walk_with_paths

HYPERPARAMETER_NAMES = frozenset(
    [
        "learning_rate",
        "b1",
        "b2",
        "b3",
        "eps",
        "eps_root",
        "weight_decay",
        "momentum",
        "nesterov",
        "decay",
        "rho",
        "alpha",
        "beta",
        "gamma",
        "eta",
        "eta_minus",
        "eta_plus",
        "initial_accumulator_value",
        "initial_scale",
        "max_norm",
        "max_delta",
        "clip_threshold",
        "clipping_threshold",
        "decay_rate",
        "decay_offset",
        "min_norm",
        "trust_coefficient",
        "threshold",
        "weight_lr_power",
        "lower_bound",
        "estim_lr0",
        "estim_lr_coef",
        "ns_steps",
        "adam_b1",
        "adam_b2",
        "adam_eps_root",
        "adam_weight_decay",
        "max_step_size",
        "min_step_size",
        "l2_norm_clip",
        "noise_multiplier",
        "scale",
        "update_proj_gap",
        "update_interval",
    ]
)
"""Names optax factories take as hyperparameters; a NoMatch on one of them gets the inject hint."""

INJECT_EXAMPLE = "optax.inject_hyperparams(optax.adamw)(learning_rate=schedule)"


def is_optax_state_type(kind: type) -> bool:
    """Whether `kind` is a state type that optax defines (`ScaleByAdamState`, `MultiStepsState`)."""
    return kind.__module__.split(".")[0] == "optax" and is_namedtuple_type(kind)


def is_inject_state(node: Any) -> bool:
    return type(node).__name__ in INJECT_STATE_NAMES and hasattr(node, "hyperparams")


def inject_state_nodes(index: StructureIndex) -> list[int]:
    """The nodes of `index` that are inject states, in pre-order."""
    return [number for name in INJECT_STATE_NAMES for number in index.by_type_name.get(name, [])]


def injected_names(index: StructureIndex) -> list[str]:
    """The names of the hyperparameters held by the inject states of `index`, in tree order."""
    names: list[str] = []
    for state in sorted(inject_state_nodes(index)):
        for child in index.children(state):
            if index.texts[child] == "hyperparams":
                names.extend(index.texts[h] for h in index.children(child) if index.texts[h] not in names)
    return names


def missing_hyperparameter_hint(
    index: StructureIndex, name: str, optimizer_given: bool = False
) -> str | None:
    """What to say when the hyperparameter `name` is not in the state, or None if not one."""
    if name not in HYPERPARAMETER_NAMES:
        return None
    held = injected_names(index)
    if optimizer_given:
        return (
            f"{name!r} is an optax hyperparameter, but neither the state nor the optimizer holds one "
            f"that can be read exactly. To make it readable and settable, inject it:\n  >>> {INJECT_EXAMPLE}"
        )
    read = f"To read it from the optimizer, pass it: oi.get(state, {name!r}, optimizer=tx). "
    if not held:
        return (
            f"{name!r} is an optax hyperparameter, but this state holds none: an optimizer keeps its "
            f"hyperparameters in its closures unless they are injected. {read}To change it, build the "
            f"optimizer with\n  >>> {INJECT_EXAMPLE}"
        )
    return (
        f"{name!r} is an optax hyperparameter, but the injected ones here are "
        f"{', '.join(held[:12])}. {read}To change it, inject it too:\n  >>> {INJECT_EXAMPLE}"
    )


class ScheduledSlot(NamedTuple):
    """An injected hyperparameter that a schedule recomputes at every update."""

    name: Any
    """Its key in `hyperparams` (and in `hyperparams_states`)."""
    state_path: KeyPath
    """The path of the inject state that holds it."""


def scheduled_slot_on(tree: Any, path: KeyPath) -> ScheduledSlot | None:
    """The scheduled hyperparameter that an edit at `path` would overwrite, if any: the path is
    `hyperparams` of an inject state with a scheduled entry, or that entry, or inside it (the
    `.value` of an nnx Variable). O(len(path)): it walks only the nodes on the path."""
    node = tree
    for depth, key in enumerate(path):
        if is_inject_state(node) and key == GetAttrKey("hyperparams"):
            schedules = getattr(node, "hyperparams_states", None) or {}
            if depth + 1 == len(path):
                entries = [k for k in node.hyperparams if k in schedules]
                return ScheduledSlot(entries[0], path[:depth]) if entries else None
            entry = path[depth + 1]
            if isinstance(entry, DictKey) and entry.key in schedules:
                return ScheduledSlot(entry.key, path[:depth])
            return None
        node = child_at(node, key)
    return None


def scheduled_slots_under(subtree: Any, path: KeyPath) -> list[ScheduledSlot]:
    """The scheduled hyperparameters of the inject states in `subtree`, the node at `path`.

    O(size of the subtree): only the edited part of the tree is walked.
    """
    slots: list[ScheduledSlot] = []
    for relative, node in walk_with_paths(subtree):
        if is_inject_state(node):
            schedules = getattr(node, "hyperparams_states", None) or {}
            state_path = (*path, *relative)
            slots.extend(ScheduledSlot(name, state_path) for name in node.hyperparams if name in schedules)
    return slots


def schedule_step_query(index: StructureIndex, slot: ScheduledSlot) -> str:
    """A query for the schedule's step counter, `hyperparams_states.<name>.count` when unique."""
    from ._resolve import find_in_index, shortest_query

    schedule = index.number_of((*slot.state_path, GetAttrKey("hyperparams_states"), DictKey(slot.name)))
    assert schedule is not None
    step = next((c for c in index.children(schedule) if index.texts[c] == "count"), None)
    target = schedule if step is None else step
    explicit = f"hyperparams_states.{slot.name}" + ("" if step is None else ".count")
    try:
        if find_in_index(index, explicit) == (target,):
            return explicit
    except ValueError:  # a name that is not a pattern component
        pass
    return shortest_query(index, target)
