"""What optax calls its things: the names and types the rest of the package recognises in a state.

Data only, so that the structure index and the pattern matcher can use it without importing the
rest of the optax rules.
"""

from __future__ import annotations

SCHEDULE_BOOKKEEPING = "hyperparams_states"
"""The field of optax's inject state that holds its schedules' states; patterns enter it only when
they name it."""

INJECT_STATE_NAMES = frozenset({"InjectStatefulHyperparamsState", "InjectHyperparamsState"})
"""The state types of `optax.inject_hyperparams` (and its stateful variant)."""

COUNTER_NAMES = frozenset(
    {"count", "step", "gradient_step", "mini_step", "step_count", "t", "steps_since_sync"}
)
"""Field names of optax states that count steps."""

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
"""How to inject a hyperparameter, as the messages show it."""


def is_optax_state_type(kind: type) -> bool:
    """Whether `kind` is a state type that optax defines (`ScaleByAdamState`, `MultiStepsState`)."""
    return kind.__module__.split(".")[0] == "optax" and issubclass(kind, tuple) and hasattr(kind, "_fields")
