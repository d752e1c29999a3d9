"""Hypothesis strategies: params trees, and optimizers composed at random from optax's factories.

Left out of random composition, each for a reason optax gives: factories that need extra `update`
arguments (line searches, lbfgs, polyak, momo, reduce_on_plateau, sophia, dpsgd; they have explicit
cases in test_coverage.py), `sm3` (fails on 0-d params), `monitor` (its state structure changes at
the first update), `flatten` (fails around `masked` and `partition`), `contrib.scale_by_muon` (fails
on dict params), and `lookahead` below the top level (it needs `LookaheadParams` as params).
A composition whose plain optax `init`/`update` raises `TypeError` is rejected by the scenario in
test_properties.py: `apply_if_finite` over an optimizer that returns float32 updates for bfloat16
params is one (optax's `lax.cond` needs both branches to have one dtype).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib as oc
from hypothesis import strategies as st

from optax_catalogue import installed

KEY_NAMES = ["w", "b", "count", "mu", "nu", "learning_rate", "inner_state", "enc.1", "layer0", "hyperparams"]
SHAPES = [(), (1,), (3,), (2, 3)]


@st.composite
def params_trees(draw: st.DrawFn) -> Any:
    """Nested dicts (and sometimes a list) of float32/bfloat16 arrays, keys that collide with state
    field names on purpose."""
    dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))

    def leaf() -> jax.Array:
        return jnp.full(draw(st.sampled_from(SHAPES)), 0.5, dtype)

    def level(depth: int) -> Any:
        keys = draw(st.lists(st.sampled_from(KEY_NAMES), min_size=1, max_size=3, unique=True))
        tree: Any = {key: (level(depth + 1) if depth < 1 and draw(st.booleans()) else leaf()) for key in keys}
        if depth == 0 and draw(st.integers(0, 4)) == 0:
            tree[draw(st.sampled_from(KEY_NAMES)) + "_list"] = [leaf(), leaf()]
        return tree

    return level(0)


def _factory(name: str) -> Callable[..., optax.GradientTransformation]:
    module, _, attribute = name.rpartition(".")
    return getattr(oc if module == "contrib" else optax, attribute)  # type: ignore[no-any-return]


CONSTANT_HYPERPARAMS: dict[str, Callable[..., optax.GradientTransformation]] = {
    name: _factory(name)
    for name in [
        "adam",
        "adamw",
        "sgd",
        "lion",
        "rmsprop",
        "adagrad",
        "adabelief",
        "lamb",
        "nadamw",
        "novograd",
        "radam",
        "yogi",
        "signum",
        "fromage",
        "contrib.ademamix",
        "contrib.madgrad",
        "contrib.schedule_free_adamw",
    ]
    if installed(name)
}
"""Aliases that take a `learning_rate` and can be injected without static_args."""

PLAIN_TRANSFORMS: list[Callable[[], optax.GradientTransformation]] = [
    lambda: optax.clip_by_global_norm(1.0),
    lambda: optax.clip(1.0),
    lambda: optax.scale_by_adam(),
    lambda: optax.scale_by_rms(),
    lambda: optax.trace(0.9),
    lambda: optax.ema(0.9),
    lambda: optax.add_decayed_weights(1e-4),
    lambda: optax.scale_by_schedule(optax.linear_schedule(1.0, 0.0, 10)),
    lambda: optax.zero_nans(),
    lambda: optax.identity(),
    lambda: optax.apply_every(2),
    lambda: optax.scale(-0.1),
]


@st.composite
def leaf_optimizers(draw: st.DrawFn) -> optax.GradientTransformation:
    name = draw(st.sampled_from(sorted(CONSTANT_HYPERPARAMS)))
    factory = CONSTANT_HYPERPARAMS[name]
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.sampled_from(PLAIN_TRANSFORMS))()
    if choice == 1:
        return factory(1e-3)
    scheduled = draw(st.booleans())
    learning_rate = optax.linear_schedule(1e-3, 1e-4, 10) if scheduled else 1e-3
    return optax.inject_hyperparams(factory)(learning_rate=learning_rate)


def _labels(params: Any, labels: list[str], draw: st.DrawFn) -> Any:
    return jax.tree.map(lambda _: draw(st.sampled_from(labels)), params)


@st.composite
def optimizers(draw: st.DrawFn, params: Any, depth: int = 0) -> optax.GradientTransformation:
    """An optimizer composed from leaves and combinators, nested up to three levels."""
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        return draw(leaf_optimizers())
    kind = draw(
        st.sampled_from(
            ["chain", "named_chain", "partition", "masked", "multi_steps", "apply_if_finite", "conditionally"]
        )
    )
    inner = optimizers(params, depth + 1)
    if kind == "chain":
        return optax.chain(*draw(st.lists(inner, min_size=1, max_size=3)))
    if kind == "named_chain":
        names = draw(
            st.lists(
                st.sampled_from(["clip", "body", "opt", "decay", "count"]),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
        return optax.named_chain(*((name, draw(inner)) for name in names))
    if kind == "partition":
        labels = draw(
            st.lists(st.sampled_from(["decay", "no_decay", "frozen"]), min_size=1, max_size=3, unique=True)
        )
        return optax.partition({label: draw(inner) for label in labels}, _labels(params, labels, draw))
    if kind == "masked":
        return optax.masked(draw(inner), jax.tree.map(lambda _: draw(st.booleans()), params))
    if kind == "multi_steps":
        return optax.MultiSteps(draw(inner), every_k_schedule=2).gradient_transformation()
    if kind == "apply_if_finite":
        return optax.apply_if_finite(draw(inner), 3)
    wrapper = draw(st.sampled_from([optax.conditionally_mask, optax.conditionally_transform]))
    return wrapper(draw(inner), lambda step: step % 2 == 0)
