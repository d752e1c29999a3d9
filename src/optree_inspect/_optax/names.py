"""What optax calls its things: the names and types the rest of the package recognises in a state.

Data only: the optax layer's rules (`fields`, `states`) and the verbs (`check`'s limits, the
inject hints) read it.
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

DECAY_RATES = frozenset({"b1", "b2", "b3", "decay", "momentum", "adam_b1", "adam_b2", "ema_decay"})
"""Injected hyperparameters that must stay below 1: at 1, Adam's bias correction divides by
`1 - b**t = 0` and a moment or a trace stops forgetting."""

EPSILONS = frozenset({"eps", "adam_eps", "epsilon"})
"""Injected hyperparameters that must stay above 0 (`eps_root`, 0 by default, is not one)."""

HYPERPARAMETER_FACTORIES: dict[str, str] = {
    "learning_rate": "adamw",
    "b1": "adamw",
    "b2": "adamw",
    "b3": "adan",
    "eps": "adamw",
    "eps_root": "adamw",
    "weight_decay": "adamw",
    "momentum": "sgd",
    "decay": "rmsprop",
    "initial_scale": "rmsprop",
    "rho": "adadelta",
    "alpha": "optimistic_gradient_descent",
    "beta": "optimistic_gradient_descent",
    "eta": "noisy_sgd",
    "gamma": "noisy_sgd",
    "eta_minus": "rprop",
    "eta_plus": "rprop",
    "min_step_size": "rprop",
    "max_step_size": "rprop",
    "initial_accumulator_value": "adagrad",
    "max_norm": "clip_by_global_norm",
    "max_delta": "clip",
    "clipping_threshold": "adafactor",
    "decay_rate": "adafactor",
    "decay_offset": "adafactor",
    "min_norm": "fromage",
    "trust_coefficient": "lars",
    "threshold": "radam",
    "clip_threshold": "contrib.sophia",
    "update_interval": "contrib.sophia",
    "weight_lr_power": "contrib.schedule_free_adamw",
    "lower_bound": "contrib.momo",
    "estim_lr0": "contrib.prodigy",
    "estim_lr_coef": "contrib.prodigy",
    "ns_steps": "contrib.muon",
    "adam_b1": "contrib.muon",
    "adam_b2": "contrib.muon",
    "adam_eps_root": "contrib.muon",
    "adam_weight_decay": "contrib.muon",
    "l2_norm_clip": "contrib.differentially_private_aggregate",
    "noise_multiplier": "contrib.differentially_private_aggregate",
}
"""Numeric hyperparameters of optax factories, each with an optax factory that takes it and that
`inject_hyperparams(factory)(..., name=value)` builds (not galore, whose `rank` must stay static);
a NoMatch on one of them gets the inject hint."""

HYPERPARAMETER_NAMES = frozenset(HYPERPARAMETER_FACTORIES)

HYPERPARAMETER_ALIASES: dict[str, tuple[str, ...]] = {
    "lr": ("learning_rate",),
    "learningrate": ("learning_rate",),
    "beta1": ("b1",),
    "beta_1": ("b1",),
    "beta2": ("b2",),
    "beta_2": ("b2",),
    "beta3": ("b3",),
    "beta_3": ("b3",),
    "betas": ("b1", "b2"),
    "epsilon": ("eps",),
    "epsilon_root": ("eps_root",),
    "wd": ("weight_decay",),
    "weightdecay": ("weight_decay",),
    "weight_decay_rate": ("weight_decay",),
    "momentum": ("b1", "decay"),
    "clipnorm": ("max_norm",),
    "clip_norm": ("max_norm",),
    "max_grad_norm": ("max_norm",),
    "gradient_clip_val": ("max_norm",),
    "clipvalue": ("max_delta",),
    "clip_value": ("max_delta",),
}
"""What users of PyTorch, Keras and other libraries type for optax's names, spelled after
`alias_key` (lower case, `-` as `_`). `momentum` is optax's own name too: the alias is what a
state without it may hold instead (adam's `b1`, rmsprop's `decay`)."""


def alias_key(name: str) -> str:
    """`name` as `HYPERPARAMETER_ALIASES` spells it: `Learning-Rate` is `learning_rate`."""
    return name.lower().replace("-", "_")


def optax_names(name: str) -> tuple[str, ...]:
    """The optax names that `name` may mean, other than itself: `lr` is `learning_rate`,
    `weight-decay` is `weight_decay`."""
    key = alias_key(name)
    found = (key,) if key in HYPERPARAMETER_FACTORIES and key != name else ()
    return tuple(dict.fromkeys((*found, *HYPERPARAMETER_ALIASES.get(key, ()))))


def is_optax_state_type(kind: type) -> bool:
    """Whether `kind` is a state type that optax defines (`ScaleByAdamState`, `MultiStepsState`)."""
    return kind.__module__.split(".")[0] == "optax" and issubclass(kind, tuple) and hasattr(kind, "_fields")
