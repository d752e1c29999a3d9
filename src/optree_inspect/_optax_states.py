"""What is special about optax states: injected hyperparameters and their schedules."""

from __future__ import annotations

from typing import Any

from ._tree import INJECT_STATE_NAMES, StructureIndex

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


def missing_hyperparameter_hint(index: StructureIndex, name: str) -> str | None:
    """What to say when the hyperparameter `name` is not in the state, or None if not one."""
    if name not in HYPERPARAMETER_NAMES:
        return None
    held = injected_names(index)
    if not held:
        return (
            f"{name!r} is an optax hyperparameter, but this state holds none: the optimizer keeps it "
            "as a constant. To read and change it, build the optimizer with\n"
            f"  >>> {INJECT_EXAMPLE}"
        )
    return (
        f"{name!r} is an optax hyperparameter, but the injected ones here are "
        f"{', '.join(held[:12])}. Inject it too:\n  >>> {INJECT_EXAMPLE}"
    )


def schedule_of(index: StructureIndex, node: int) -> int | None:
    """For an injected hyperparameter driven by a schedule, its `hyperparams_states` entry.

    `node` is scheduled when it is `hyperparams[k]` of an inject state (or a node inside it, such
    as the `.value` of an nnx Variable) and the same state has `hyperparams_states[k]`.
    """
    chain = [*index.ancestors(node), node]
    for depth in range(len(chain) - 2):
        state, field, entry = chain[depth], chain[depth + 1], chain[depth + 2]
        if index.types[state].__name__ in INJECT_STATE_NAMES and index.texts[field] == "hyperparams":
            for sibling in index.children(state):
                if index.texts[sibling] == "hyperparams_states":
                    for schedule in index.children(sibling):
                        if index.keys[schedule] == index.keys[entry]:
                            return schedule
    return None
