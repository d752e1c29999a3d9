"""The demo: `python -m optree_inspect`; with arguments, the command line (`optree-inspect`).

Builds the README's chained, scheduled optimizer and trains a tiny model a few steps, with `set`
and `get` inside `jax.jit`; then shows each verb once on its state: `describe`, `find`, `get`,
`hyperparams`, `set`'s refusal of a scheduled value, `check` and `stats` on a planted NaN, `diff`
of two steps, `load` and `restore_like` through an orbax checkpoint (with the command line on it,
where orbax-checkpoint is installed), and the hyperparameters of a plain `optax.adamw` read from
the optimizer itself.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Callable
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

    _title("set and get inside jax.jit, training a tiny model")
    for number in range(8):
        weight_decay = 1e-4 if number < 4 else 1e-2
        params, state, value, lr = step(params, state, weight_decay)
        print(f"step {number}: loss {float(value):.4f}, learning_rate {float(lr):.6f}")
    print(f"the jitted step was traced {len(traces)} time(s) for two weight decays")

    _title("describe: print(oi.describe(state))")
    print(oi.describe(state))

    _title("find and get")
    print(f"oi.find(state, 'count'): {', '.join(oi.keystr(m.path) for m in oi.find(state, 'count'))}")
    print(f"oi.get(state, 'learning_rate') = {float(oi.get(state, 'learning_rate')):.6f}")
    _refused("oi.get(state, 'lerning_rate')", lambda: oi.get(state, "lerning_rate"))

    _title("hyperparams: oi.hyperparams(state, counters=True), keys for a logger")
    for name, value in oi.hyperparams(state, counters=True).items():
        print(f"  {name}: {float(value):.6g}")

    _title("set: a scheduled value is refused, its schedule's step moves")
    _refused("oi.set(state, 'learning_rate', 1e-3)", lambda: oi.set(state, "learning_rate", 1e-3))
    moved = oi.set(state, "hyperparams_states.learning_rate.count", 40)
    _, _, _, lr = step(params, moved, 1e-2)
    print(f"after moving the schedule to step 40, the next learning rate is {float(lr):.6f}")

    _title("check and stats: a NaN planted in the first moment")
    broken = oi.set(state, "mu.dense.w", lambda w: w.at[0, 0].set(jnp.nan))
    print(f"print(oi.check(broken)):\n{oi.check(broken)}")
    print("oi.stats(broken, 'mu'):")
    for query, numbers in oi.stats(broken, "mu").items():
        print(f"  {query}: {numbers['nan']} NaN, rms {numbers['rms']:.3g} of the finite values")

    _title("diff: print(oi.diff(state, next_state)), one step apart")
    _, next_state, _, _ = step(params, state, 1e-2)
    print(oi.diff(state, next_state))

    _title("load and restore_like: the state through an orbax checkpoint")
    _checkpoint(state)

    _title("hyperparams that were never injected, read from the optimizer")
    plain = optax.adamw(schedule)  # its hyperparameters live in its closures
    read = oi.hyperparams(plain.init(params), optimizer=plain)
    print("oi.hyperparams(state, optimizer=optax.adamw(schedule)):")
    print("  " + ", ".join(f"{name}: {float(value):.6g}" for name, value in read.items()))


def _checkpoint(state: Any) -> None:
    """Save `state` with orbax, read it back as orbax restores it without a target, and put it
    back into the state's types; then the command line on the same directory."""
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        print("(pip install 'optree_inspect[orbax]' to see load, restore_like and optree-inspect)")
        return
    from optree_inspect._cli import main as command_line

    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / "state"
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, state)
        checkpointer.wait_until_finished()
        raw = oi.load(path, arrays=True)  # lists, dicts and None, as orbax restores it
        print("raw = oi.load(path, arrays=True): lists, dicts and None, as orbax restores it")
        count = int(oi.get(raw, "ScaleByAdamState.count"))
        print(f"oi.get(raw, 'ScaleByAdamState.count') = {count}, the same query as on the live state")
        back = oi.restore_like(raw, like=state)
        print(f"oi.diff(state, oi.restore_like(raw, like=state)): {oi.diff(state, back)}")
        print("$ optree-inspect get PATH learning_rate")
        command_line(["get", str(path), "learning_rate"])


def _title(text: str) -> None:
    print(f"\n== {text}")


def _refused(call: str, run: Callable[[], object]) -> None:
    try:
        run()
    except oi.Error as error:
        print(f"{call} raises {type(error).__name__}:")
        print("  " + str(error).replace("\n", "\n  "))


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        from optree_inspect._cli import entry_point

        entry_point()
    main()
