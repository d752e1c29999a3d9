"""The demo: `python -m optree_inspect`; with arguments, the command line (`optree-inspect`).

Builds the README's chained, scheduled optimizer, trains a tiny model a few steps, reads the
learning rate with `get` and sets the weight decay with `set`, inside `jax.jit`; then reads the
hyperparameters of a plain (never injected) `optax.adamw` from the optimizer itself.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

import optree_inspect as oi


def main() -> None:
    key_w, key_x = jax.random.split(jax.random.key(0))
    params = {"dense": {"w": 0.1 * jax.random.normal(key_w, (3, 1)), "b": jnp.zeros(1)}}
    inputs = jax.random.normal(key_x, (32, 3))
    targets = inputs @ jnp.array([[1.0], [-2.0], [0.5]])

    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=5, decay_steps=50)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adamw)(learning_rate=schedule),
    )
    state = tx.init(params)

    def loss(params: Any) -> jax.Array:
        prediction = inputs @ params["dense"]["w"] + params["dense"]["b"]
        return jnp.mean((prediction - targets) ** 2)

    traces = []

    @jax.jit
    def step(params: Any, state: Any, weight_decay: float) -> tuple[Any, Any, jax.Array, jax.Array]:
        traces.append(1)
        state = oi.set(state, "weight_decay", weight_decay)  # in-graph: no retrace per value
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value, oi.get(state, "learning_rate")

    for number in range(8):
        weight_decay = 1e-4 if number < 4 else 1e-2
        params, state, value, lr = step(params, state, weight_decay)
        print(f"step {number}: loss {float(value):.4f}, learning_rate {float(lr):.6f}")
    print(f"the jitted step was traced {len(traces)} time(s) for two weight decays")

    print("\noi.describe(state):")
    print(oi.describe(state))
    print(f"\noi.get(state, 'learning_rate') = {float(oi.get(state, 'learning_rate')):.6f}")
    print(f"its path: {oi.keystr(oi.find(state, 'learning_rate')[0].path)}")
    print(f"oi.hyperparams(state, counters=True) = {_floats(oi.hyperparams(state, counters=True))}")
    try:
        oi.set(state, "learning_rate", 1e-3)
    except oi.ScheduledHyperparameterError as error:
        print(f"\noi.set(state, 'learning_rate', 1e-3) refuses:\n{error}")
    moved = oi.set(state, "hyperparams_states.learning_rate.count", 40)
    _, _, _, lr = step(params, moved, 1e-2)
    print(f"after moving the schedule to step 40, the next learning rate is {float(lr):.6f}")

    plain = optax.adamw(schedule)  # never injected: its hyperparameters live in its closures
    plain_state = plain.init(params)
    read = _floats(oi.hyperparams(plain_state, optimizer=plain))
    print(f"\nadamw without inject_hyperparams, read from the optimizer: {read}")


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {name: float(f"{float(value):.6g}") for name, value in values.items()}


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        from optree_inspect._cli import entry_point

        entry_point()
    main()
