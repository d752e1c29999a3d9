"""Optax states shared by many tests: the seed optimizer and every optax wrapper."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

PARAMS = {"dense1": {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}, "head": {"w": jnp.ones((4, 2))}}
LABELS = {"dense1": {"w": "decay", "b": "no_decay"}, "head": {"w": "decay"}}
MASK = {"dense1": {"w": True, "b": False}, "head": {"w": True}}


def schedule() -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=10, decay_steps=100)


def seed_optimizer() -> optax.GradientTransformation:
    """The README's optimizer: clip, then adamw with a scheduled learning rate."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adamw)(learning_rate=schedule()),
    )


def layered_params(layers: int) -> dict[str, Any]:
    return {f"layer{i}": {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)} for i in range(layers)}


def trained(
    tx: optax.GradientTransformation, params: Any = PARAMS, steps: int = 2, grads: Any = None, **extra: Any
) -> Any:
    """The state of `tx` after `steps` jitted updates with constant gradients."""
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params) if grads is None else grads

    @jax.jit
    def step(state: Any) -> Any:
        return tx.update(grads, state, params, **extra)[1]

    for _ in range(steps):
        state = step(state)
    return state


WRAPPED: dict[str, Callable[[], optax.GradientTransformation]] = {
    "chain": seed_optimizer,
    "named_chain": lambda: optax.named_chain(
        ("clip", optax.clip_by_global_norm(1.0)),
        ("body", optax.inject_hyperparams(optax.adamw)(learning_rate=schedule())),
    ),
    "partition": lambda: optax.partition(
        {
            "decay": optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3),
            "no_decay": optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2),
        },
        LABELS,
    ),
    "masked": lambda: optax.masked(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), MASK),
    "multi_steps": lambda: optax.MultiSteps(
        optax.inject_hyperparams(optax.adam)(learning_rate=schedule()), every_k_schedule=2
    ).gradient_transformation(),
    "apply_if_finite": lambda: optax.apply_if_finite(
        optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), 3
    ),
    "lookahead": lambda: optax.lookahead(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), 2, 0.5),
    "inject_constant": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
    "inject_scheduled": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=schedule()),
    "conditionally_mask": lambda: optax.conditionally_mask(
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), lambda step: step % 2 == 0
    ),
}
"""Every optax wrapper around an injected optimizer with one `learning_rate`."""


def wrapped_state(name: str) -> Any:
    tx = WRAPPED[name]()
    if name == "lookahead":
        grads = jax.tree.map(jnp.ones_like, PARAMS)
        return trained(tx, optax.LookaheadParams.init_synced(PARAMS), grads=grads)
    return trained(tx)


def nnx_optimizer() -> Any:
    """An `nnx.Optimizer` of a one-layer model with the seed optimizer: its state holds Variables."""
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.linear = nnx.Linear(2, 3, rngs=rngs)

    return nnx.Optimizer(Model(nnx.Rngs(0)), seed_optimizer(), wrt=nnx.Param)


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiled = [0]


def _count_compilation(event: str, duration: float, **kwargs: Any) -> None:
    if event == COMPILE_EVENT:
        _compiled[0] += 1


# Registered once for the session: jax 0.6 has no public way to unregister a listener.
jax.monitoring.register_event_duration_secs_listener(_count_compilation)


def compilations(function: Callable[..., Any], *args: Any) -> int:
    """How many XLA backend compilations `function(*args)` makes."""
    before = _compiled[0]
    function(*args)
    return _compiled[0] - before


def skip_unless_a_pytree(node: Any) -> None:
    """Skip a test of `node` where it is no pytree: an `nnx.Optimizer` before flax 0.11."""
    import pytest

    if jax.tree_util.default_registry.flatten_one_level(node) is None:
        pytest.skip(f"a {type(node).__name__} is not a pytree in this flax (before 0.11): use its opt_state")


def as_restored(tree: Any) -> Any:
    """What orbax restores without a target: NamedTuples as dicts, tuples as lists, empty states
    as None, any mapping as a dict."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {k: as_restored(v) for k, v in tree._asdict().items()} if tree._fields else None
    if isinstance(tree, tuple | list):
        return [as_restored(v) for v in tree]
    if isinstance(tree, dict) or type(tree).__name__ == "FrozenDict":
        return {k: as_restored(v) for k, v in tree.items()}
    return tree


def run_two_processes(command: list[str], env: dict[str, str]) -> list[str]:
    """`run_processes` of two."""
    return run_processes(command, env, 2)


def run_processes(command: list[str], env: dict[str, str], count: int, timeout: float = 300) -> list[str]:
    """`python command... RANK PORT` as `count` processes joined by `jax.distributed` on a free
    local port, each given `timeout` seconds so that a hang fails; their outputs, once all exited
    0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    processes = [
        subprocess.Popen(
            [sys.executable, *command, str(rank), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(count)
    ]
    deadline = time.monotonic() + timeout
    try:
        outputs = [
            process.communicate(timeout=max(1.0, deadline - time.monotonic())) for process in processes
        ]
    finally:
        for process in processes:
            process.kill()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]
