"""Side-by-side timings of optree_inspect and its peers, all in one process.

Run: `.venv/bin/pip install -e ".[test,bench]" && .venv/bin/python benchmarks/run.py`
(`--quick` for 100 and 1,000 layers only). Prints a Markdown table; a run on the development
machine is in `benchmarks/RESULTS.md`.

The state is the README's seed optimizer, `chain(clip_by_global_norm, inject_hyperparams(adamw)(
schedule))`, over `{"layer{i}": {"w": (4, 4), "b": (4,)}}` params. Its learning rate is scheduled,
so `set` is measured on `weight_decay` (a constant injected hyperparameter) for every library.
Each figure is the median of repeated calls on the same state, after one warm-up call: a training
loop calls these on states of one structure every step.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optree_inspect as oi

Timing = Callable[[], Any]


def seed_state(layers: int, prefix: str = "") -> Any:
    params = {f"{prefix}layer{i}": {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)} for i in range(layers)}
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=100, decay_steps=10_000)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(learning_rate=schedule)
    )
    return tx.init(params)


def median_seconds(function: Timing, budget: float = 0.3, max_runs: int = 200) -> float:
    """The median of repeated timed calls, after a warm-up call; batches calls under 1 ms."""
    function()
    start = time.perf_counter()
    function()
    once = time.perf_counter() - start
    batch = max(1, int(1e-3 / once)) if once < 1e-3 else 1
    runs = max(3, min(max_runs, int(budget / max(once * batch, 1e-9))))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(batch):
            function()
        samples.append((time.perf_counter() - start) / batch)
    return statistics.median(samples)


def is_array(_: Any, value: Any) -> bool:
    return isinstance(value, jax.Array)


def cases(state: Any) -> dict[str, Timing | None]:
    """Every timed operation; `None` where the peer is not installed."""
    last = state[1].hyperparams["learning_rate"]
    ours: dict[str, Timing | None] = {
        "ours get(pattern)": lambda: oi.get(state, "learning_rate"),
        "ours get(keystr)": lambda: oi.get(state, "[1].hyperparams['learning_rate']"),
        "ours set": lambda: oi.set(state, "weight_decay", 0.5),
        "ours describe": lambda: str(oi.describe(state)),
        "ours hyperparams": lambda: oi.hyperparams(state),
        "optax tree_get": lambda: optax.tree_utils.tree_get(state, "learning_rate", filtering=is_array),
        "optax tree_set": lambda: optax.tree_utils.tree_set(state, is_array, weight_decay=0.5),
        "floor jax.tree.structure": lambda: jax.tree.structure(state),
        "floor hand indexing": lambda: state[1].hyperparams["learning_rate"],
    }
    if importlib.util.find_spec("equinox"):
        import equinox as eqx

        ours["eqx.tree_at"] = lambda: eqx.tree_at(lambda s: s[1].hyperparams["weight_decay"], state, 0.5)
        ours["eqx.tree_pformat"] = lambda: eqx.tree_pformat(state)
    else:
        ours["eqx.tree_at"] = ours["eqx.tree_pformat"] = None
    if importlib.util.find_spec("penzai"):
        from penzai import pz

        def named(name: str) -> Callable[[Any, Any], bool]:
            def where(path: Any, value: Any) -> bool:
                return bool(path) and getattr(path[-1], "key", None) == name and isinstance(value, jax.Array)

            return where

        ours["penzai get"] = lambda: (
            pz.select(state).at_subtrees_where(named("learning_rate"), with_keypath=True).get()
        )
        ours["penzai set"] = lambda: (
            pz.select(state).at_subtrees_where(named("weight_decay"), with_keypath=True).set(0.5)
        )
    else:
        ours["penzai get"] = ours["penzai set"] = None
    if importlib.util.find_spec("treescope"):
        import treescope

        ours["treescope render_to_text"] = lambda: treescope.render_to_text(state)
    else:
        ours["treescope render_to_text"] = None
    assert last is oi.get(state, "learning_rate")
    return ours


RATIOS = [
    ("get(pattern) vs optax tree_get", "optax tree_get", "ours get(pattern)"),
    ("get(pattern) / jax.tree.structure", "ours get(pattern)", "floor jax.tree.structure"),
    ("set vs optax tree_set", "optax tree_set", "ours set"),
    ("set vs eqx.tree_at", "eqx.tree_at", "ours set"),
    ("get(pattern) vs penzai get", "penzai get", "ours get(pattern)"),
    ("set vs penzai set", "penzai set", "ours set"),
    ("describe vs eqx.tree_pformat", "eqx.tree_pformat", "ours describe"),
    ("describe vs treescope", "treescope render_to_text", "ours describe"),
]


def trace_cost() -> tuple[float, float]:
    """Seconds to trace and lower a jitted update step, without and with an in-graph `set`."""
    state = seed_state(100)
    params = {f"layer{i}": {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)} for i in range(100)}
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=100, decay_steps=10_000)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(learning_rate=schedule)
    )

    def plain(state: Any, decay: jax.Array) -> Any:
        return tx.update(params, state, params)[1]

    def with_set(state: Any, decay: jax.Array) -> Any:
        return tx.update(params, oi.set(state, "weight_decay", decay), params)[1]

    def lower(step: Callable[..., Any]) -> float:
        return median_seconds(lambda: jax.jit(step).lower(state, 0.1), budget=2.0, max_runs=7)

    return lower(plain), lower(with_set)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "skipped"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def state_kinds(layers: int) -> dict[str, Any]:
    """adam's state of the README's optimizer, of dict params whose siblings alternate between
    three structures, of a dict of `eqx.Module` layers, and an nnx Optimizer's state over as many
    `nnx.Linear`s (where equinox and flax are installed)."""
    zeros = jnp.zeros(4)
    alternating = {  # sorted keys alternate between three structures
        f"block{i:04d}_{name}": value
        for i in range(layers * 2 // 3)
        for name, value in (("attn", {"w": zeros, "b": zeros}), ("mlp", {"w": zeros}), ("scale", zeros))
    }
    kinds = {
        "README state": seed_state(layers),
        "alternating dict params": optax.adam(1e-3).init(alternating),
    }
    if importlib.util.find_spec("equinox") is not None:
        import equinox as eqx

        class Linear(eqx.Module):
            weight: jax.Array
            bias: jax.Array

        params = {f"layer{i}": Linear(jnp.zeros((4, 4)), jnp.zeros(4)) for i in range(layers)}
        kinds["eqx Module params"] = optax.adam(1e-3).init(params)
    if importlib.util.find_spec("flax") is not None:
        from flax import nnx

        class Stack(nnx.Module):
            def __init__(self) -> None:
                linears = [nnx.Linear(4, 4, rngs=nnx.Rngs(0)) for _ in range(layers)]
                self.layers = nnx.List(linears) if hasattr(nnx, "List") else linears

        kinds["nnx Optimizer state"] = nnx.state(nnx.Optimizer(Stack(), optax.adam(1e-3), wrt=nnx.Param))
    return kinds


def renamed(tree: Any, tag: int, copy: bool) -> Any:
    """`tree` with every `str` key that starts with "layer" or "block" prefixed by `t{tag}_` (a
    tree of the same shape that only its names tell apart) and, if `copy`, new arrays."""

    def name(key: Any) -> Any:
        return f"t{tag}_{key}" if isinstance(key, str) and key.startswith(("layer", "block")) else key

    def walk(node: Any) -> Any:
        if isinstance(node, dict) or type(node).__name__ == "State":  # a dict, an nnx.State
            return type(node)({name(key): walk(value) for key, value in node.items()})
        flat = jax.tree_util.default_registry.flatten_one_level(node)
        if flat is None:
            return jnp.copy(node) if copy and isinstance(node, jax.Array) else node
        one_level = jax.tree.structure(node, is_leaf=lambda child: child is not node)
        return one_level.unflatten([walk(child) for child in flat[0]])

    return walk(tree)


def first_call_section(layers: int, rounds: int = 7, cached: int = 31) -> None:
    """The first call on a structure, as a user's notebook meets it: `cached` other structures of
    the same shape (other names) seen before, then, each round, a fresh state (new names, new
    arrays, built untimed) for each call, timed right after one `jax.tree.structure` of it. The
    README's state, dict params whose siblings alternate between three structures, params in
    equinox and nnx Modules."""
    kinds = state_kinds(layers)
    for tag in range(cached):
        for state in kinds.values():
            oi.find(renamed(state, tag, copy=False), "count")
    print(
        f"\n| first call ({cached} structures of the same shape cached) | leaves | jax.tree.structure | ours "
        "| ours / structure |\n|---|---|---|---|---|"
    )
    calls: dict[str, Callable[[str, Any], Any]] = {
        "get/find by name": lambda kind, s: (
            oi.get(s, "learning_rate") if kind == "README state" else oi.find(s, "count")
        ),
        "find(ScaleByAdamState)": lambda kind, s: oi.find(s, optax.ScaleByAdamState),
        "describe": lambda kind, s: oi.describe(s),
    }
    floors: dict[tuple[str, str], list[float]] = {}
    ours: dict[tuple[str, str], list[float]] = {}
    counts: dict[str, int] = {}
    tags = itertools.count(1000)
    for _ in range(rounds):
        for call_name, call in calls.items():
            tag = next(tags)
            for state_name, kind in kinds.items():
                state = renamed(kind, tag, copy=True)  # new names, new arrays
                counts[state_name] = len(jax.tree.leaves(state))
                start = time.perf_counter()
                jax.tree.structure(state)
                floors.setdefault((state_name, call_name), []).append(time.perf_counter() - start)
                start = time.perf_counter()
                call(state_name, state)
                ours.setdefault((state_name, call_name), []).append(time.perf_counter() - start)
    for (state_name, call_name), samples in sorted(ours.items()):
        floor, mine = statistics.median(floors[(state_name, call_name)]), statistics.median(samples)
        readme_get = state_name == "README state" and call_name.startswith("get")
        shown = 'get("learning_rate")' if readme_get else call_name
        print(
            f"| {state_name}: {shown} | {counts[state_name]:,} | {format_seconds(floor)} | "
            f"{format_seconds(mine)} | {mine / floor:.1f}x |"
        )


def migrate_section(layers: int, rounds: int = 5) -> None:
    """`migrate` of adam's state into `chain(clip, inject_hyperparams(adamw))` (a transform inserted
    and a wrapper added), a first call on fresh arrays each round, beside `restore_like` into an
    unchanged optimizer and `jax.tree.map(jnp.copy, ...)` of the same state (a floor: one array op
    a leaf). The new states are built before the timed calls."""
    new_tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
    )
    timings: dict[str, list[float]] = {"jax.tree.map(jnp.copy)": [], "restore_like": [], "migrate": []}
    count = 0
    for round_number in range(rounds):
        params = {f"layer{i}": {"w": jnp.full(4, round_number + i, jnp.float32)} for i in range(layers)}
        old = optax.adam(1e-3).init(params)
        count = len(jax.tree.leaves(old))
        same, changed = optax.adam(1e-3).init(params), new_tx.init(params)  # not timed
        calls = {
            "jax.tree.map(jnp.copy)": lambda o=old: jax.block_until_ready(jax.tree.map(jnp.copy, o)),
            "restore_like": lambda o=old, like=same: oi.restore_like(o, like),
            "migrate": lambda o=old, like=changed: oi.migrate(o, like),
        }
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - start)
    print(f"\n| first call, {count:,} leaves | median of {rounds} |\n|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {format_seconds(statistics.median(seconds))} |")


def by_hand_device_bytes(tree: Any) -> dict[int, int]:
    """The peer: bytes per device summed over each array's shards, as users write it by hand
    (a `per_device_total` dump over `addressable_shards`)."""
    totals: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device.id] = totals.get(shard.device.id, 0) + shard.data.nbytes
    return totals


def memory_section(layers: int, rounds: int = 5) -> None:
    """`memory` of adam's state with its params: a first call on a fresh state each round (new
    keys, new arrays, after other structures were seen), then later calls, beside the hand-written
    per-device sum over shards (which gives bytes per device only, no roles, regions or findings)
    and `jax.tree.structure`."""
    firsts: list[float] = []
    state: Any = None
    params: Any = None
    for round_number in range(rounds):
        params = {f"r{round_number}_{i}": {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)} for i in range(layers)}
        state = optax.adam(1e-3).init(params)
        start = time.perf_counter()
        oi.memory(state, params=params)
        firsts.append(time.perf_counter() - start)
    count = len(jax.tree.leaves(state)) + len(jax.tree.leaves(params))
    rows = [
        (f"ours memory, first call ({count:,} leaves, median of {rounds})", statistics.median(firsts)),
        (
            f"ours memory, later calls ({count:,} leaves)",
            median_seconds(lambda: oi.memory(state, params=params)),
        ),
        (
            "peer per-device sum over addressable_shards",
            median_seconds(lambda: by_hand_device_bytes((state, params))),
        ),
        ("floor jax.tree.structure", median_seconds(lambda: jax.tree.structure((state, params)))),
    ]
    print("\n| memory (bytes by device, role and region) | time |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {format_seconds(seconds)} |")


def values_section(layers: int, treescope_layers: int, large: int) -> None:
    """`describe(stats=True)` and `check`: first call (compilations included) and later calls on the
    seed state; the peers on the same state; a state of 8 large leaves against `jnp.max` per leaf."""
    state = jax.tree.map(lambda x: x + 0.5, seed_state(layers))  # values that are not all zero
    count = len(jax.tree.leaves(state))
    jax.clear_caches()
    oi.clear_caches()
    start = time.perf_counter()
    oi.describe(state, stats=True)
    first = time.perf_counter() - start
    rows = [
        (f"ours describe(stats=True), first call ({count:,} leaves)", first),
        (
            f"ours describe(stats=True), later calls ({count:,} leaves)",
            median_seconds(lambda: oi.describe(state, stats=True)),
        ),
        (f"ours check ({count:,} leaves)", median_seconds(lambda: oi.check(state))),
        (f"ours stats ({count:,} leaves)", median_seconds(lambda: oi.stats(state))),
    ]
    small = jax.tree.map(lambda x: x + 0.5, seed_state(treescope_layers))
    small_count = len(jax.tree.leaves(small))
    ours_small = median_seconds(lambda: str(oi.describe(small, stats=True)))
    rows.append((f"ours describe(stats=True) ({small_count:,} leaves)", ours_small))
    if importlib.util.find_spec("treescope") is not None:
        import treescope

        def render() -> str:
            with treescope.active_autovisualizer.set_scoped(treescope.ArrayAutovisualizer()):
                return treescope.render_to_html(small)

        peer = median_seconds(render, budget=0.1, max_runs=3)
        rows.append((f"treescope render_to_html with array summaries ({small_count:,} leaves)", peer))
        rows.append(("ratio treescope / ours (same state)", peer / ours_small))
    big = {f"layer{i}": jnp.full((large,), 0.5, jnp.float32) + i for i in range(8)}
    jnp.max(big["layer0"]).block_until_ready()
    floor_big = median_seconds(lambda: [jnp.max(x).block_until_ready() for x in big.values()], 1.0, 10)
    ours_stats = median_seconds(lambda: oi.stats(big), budget=1.0, max_runs=10)
    ours_check = median_seconds(lambda: oi.check(big), budget=1.0, max_runs=10)
    rows.append((f"ours stats of 8 leaves of {large:,} f32", ours_stats))
    rows.append(("ours check of the same 8 leaves", ours_check))
    rows.append(("floor jnp.max of each of the 8 leaves", floor_big))
    rows.append(("ratio ours stats / floor (same leaves)", ours_stats / floor_big))
    rows.append(("ratio ours check / floor (same leaves)", ours_check / floor_big))
    other = jax.tree.map(lambda x: x + 0.5, seed_state(layers))  # equal values, other arrays
    oi.diff(state, other)
    ours_diff = median_seconds(lambda: oi.diff(state, other))
    rows.append((f"ours diff of two equal states ({count:,} leaves)", ours_diff))
    if importlib.util.find_spec("equinox") is not None:
        import equinox as eqx

        peer_equal = median_seconds(lambda: eqx.tree_equal(state, other))
        rows.append((f"eqx.tree_equal, yes or no ({count:,} leaves)", peer_equal))
        rows.append(("ratio ours diff / eqx.tree_equal (same pair)", ours_diff / peer_equal))
    print("\n| values (what is wrong here, what changed) | time |\n|---|---|")
    for name, value in rows:
        shown = f"{value:,.1f}x" if name.startswith("ratio") else format_seconds(value)
        print(f"| {name} | {shown} |")


def by_hand_metrics(state: Any, params: Any, grads: Any, updates: Any) -> dict[str, jax.Array]:
    """The peer: the same values written by hand for this one optimizer, as users do (optax issue
    #326): an RMS per tree and top-level key, non-finite counts, the hyperparameters."""

    def rms(tree: Any) -> jax.Array:
        leaves = jax.tree.leaves(tree)
        return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves) / sum(x.size for x in leaves))

    adam = state.inner_state[0]
    trees = {"params": params, "grads": grads, "updates": updates, "mu": adam.mu, "nu": adam.nu}
    found = dict(state.hyperparams)
    for region in [None, *params]:
        mine = trees if region is None else {name: tree[region] for name, tree in trees.items()}
        name = region or "all"
        found.update({f"{name}/{key}_rms": rms(tree) for key, tree in mine.items()})
        found[f"{name}/update_ratio"] = found[f"{name}/updates_rms"] / found[f"{name}/params_rms"]
        found[f"{name}/nonfinite"] = sum(jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(mine))
    return found


def mlp_steps(sizes: list[int], batch: int) -> tuple[Timing, Timing, Timing]:
    """A small MLP's jitted adamw step: alone, returning `metrics`, and returning the same values
    written by hand; each a call on the same arrays."""
    from optree_inspect._metrics import metrics

    key = jax.random.PRNGKey(0)
    params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        key, sub = jax.random.split(key)
        weights = jax.random.normal(sub, (fan_in, fan_out)) / fan_in**0.5
        params[f"dense{i}"] = {"w": weights, "b": jnp.zeros(fan_out)}
    x = jax.random.normal(key, (batch, sizes[0]))
    y = jax.random.normal(jax.random.split(key)[0], (batch, sizes[-1]))
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)

    def loss(params: Any) -> jax.Array:
        h = x
        for i in range(len(params)):
            h = h @ params[f"dense{i}"]["w"] + params[f"dense{i}"]["b"]
            h = jax.nn.relu(h) if i < len(params) - 1 else h
        return jnp.mean((h - y) ** 2)

    @jax.jit
    def plain(params: Any, state: Any) -> Any:
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    def with_metrics(read: Callable[..., Any]) -> Callable[..., Any]:
        @jax.jit
        def step(params: Any, state: Any) -> Any:
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = tx.update(grads, state, params)
            found = read(state, params=params, grads=grads, updates=updates)
            return optax.apply_updates(params, updates), state, value, found

        return step

    ours, by_hand = with_metrics(metrics), with_metrics(by_hand_metrics)
    state = tx.init(params)
    return lambda: plain(params, state), lambda: ours(params, state), lambda: by_hand(params, state)


def alternating_medians(first: Timing, second: Timing, steps: int) -> tuple[float, float]:
    """The median seconds of each of two steps, timed in alternation so that a noisy machine slows
    both alike. Each is timed to its new parameters being ready, as a training loop waits for
    them; the other outputs come from the same execution."""
    times: tuple[list[float], list[float]] = ([], [])
    for function in (first, second):
        jax.block_until_ready(function())
    for _ in range(steps):
        for function, samples in zip((first, second), times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(function()[0])
            samples.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def metrics_section(steps: int = 2000) -> None:
    """What returning `metrics` adds to a jitted training step of a small MLP on CPU: the step
    alone and the step that also returns `metrics(state, params=, grads=, updates=)`, side by
    side, timed in alternation (the median of `steps` steps each), and the same for the values
    written by hand; then an eager call on the seed state."""
    from optree_inspect._metrics import metrics

    print("\n| adamw step of an MLP (sizes, batch) | params | step | + metrics | ratio | by hand: ratio |")
    print("|---|---|---|---|---|---|")
    for sizes, batch in (([32, 64, 64, 10], 32), ([784, 256, 256, 10], 128), ([784, 256, 256, 10], 1024)):
        plain, ours, by_hand = mlp_steps(sizes, batch)
        runs = steps if batch < 1024 else steps // 4
        alone, both = alternating_medians(plain, ours, runs)
        peer_alone, peer = alternating_medians(plain, by_hand, runs)
        count = sum(a * b + b for a, b in itertools.pairwise(sizes))
        times = f"{format_seconds(alone)} | {format_seconds(both)} | {both / alone:.3f}"
        print(f"| {'-'.join(map(str, sizes))}, {batch} | {count:,} | {times} | {peer / peer_alone:.3f} |")
    state = jax.tree.map(lambda x: x + 0.5, seed_state(1000))
    params = {f"layer{i}": {"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)} for i in range(1000)}
    count = len(jax.tree.leaves((state, params)))
    start = time.perf_counter()
    metrics(state, params=params)
    first = time.perf_counter() - start
    print(f"\n| metrics eagerly ({count:,} leaves, 1,000 regions) | time |\n|---|---|")
    print(f"| first call (compilation included) | {format_seconds(first)} |")
    print(f"| later calls | {format_seconds(median_seconds(lambda: metrics(state, params=params)))} |")
    print(f"| ours stats, same state | {format_seconds(median_seconds(lambda: oi.stats(state)))} |")


def cli_section(layers: int, rounds: int = 7) -> None:
    """`optree-inspect describe` of a checkpoint of the README's state (saved by orbax's
    `StandardCheckpointer`), process start included, beside `python -c "import jax, optax"`: the
    imports it cannot avoid. Both are run in alternation, `rounds` times each."""
    if importlib.util.find_spec("orbax") is None:
        print("\n(orbax-checkpoint is not installed: no command-line timings)")
        return
    import subprocess
    import sys
    import tempfile

    import orbax.checkpoint as ocp

    state = seed_state(layers)
    count = len(jax.tree.leaves(state))
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/state"
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, state)
        checkpointer.wait_until_finished()
        script = str(pathlib.Path(sys.executable).with_name("optree-inspect"))
        commands = {
            'python -c "import jax, optax"': [sys.executable, "-c", "import jax, optax"],
            "optree-inspect describe": [script, "describe", path],
        }
        timings: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                timings[name].append(time.perf_counter() - start)
    print(f"\n| command line, a checkpoint of {count:,} leaves | median of {rounds} |\n|---|---|")
    medians = {name: statistics.median(samples) for name, samples in timings.items()}
    for name, seconds in medians.items():
        print(f"| {name} | {format_seconds(seconds)} |")
    ratio = medians["optree-inspect describe"] / medians['python -c "import jax, optax"']
    print(f"| ratio describe / imports | {ratio:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 layers only")
    parser.add_argument("--values-only", action="store_true", help="only the statistics section")
    parser.add_argument("--first-call-only", action="store_true", help="only the first-call section")
    parser.add_argument("--migrate-only", action="store_true", help="only the migrate section")
    parser.add_argument("--memory-only", action="store_true", help="only the memory section")
    parser.add_argument("--metrics-only", action="store_true", help="only the metrics section")
    parser.add_argument("--cli-only", action="store_true", help="only the command-line section")
    arguments = parser.parse_args()
    if arguments.metrics_only:
        metrics_section()
        return
    if arguments.cli_only:
        cli_section(5000)
        return
    if arguments.memory_only:
        memory_section(10000)
        return
    if arguments.migrate_only:
        migrate_section(10000)
        return
    if arguments.first_call_only:
        first_call_section(5000)
        return
    if arguments.values_only:
        values_section(5000, 1000, 1 << 26)
        return
    layers = [100, 1000] if arguments.quick else [100, 1000, 5000]
    results: dict[int, dict[str, float | None]] = {}
    leaves: dict[int, int] = {}
    for count in layers:
        state = seed_state(count)
        leaves[count] = len(jax.tree.leaves(state))
        results[count] = {
            name: None if timing is None else median_seconds(timing) for name, timing in cases(state).items()
        }

    print(f"jax {jax.__version__}, optax {optax.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {jax.devices()[0].platform}")  # fmt: skip
    header = " | ".join(f"{leaves[c]:,} leaves" for c in layers)
    print(f"\n| operation | {header} |\n|---|{'---|' * len(layers)}")
    for name in results[layers[0]]:
        print(f"| {name} | " + " | ".join(format_seconds(results[c][name]) for c in layers) + " |")

    print(f"\n| ratio (same run) | {header} |\n|---|{'---|' * len(layers)}")
    for label, slower, faster in RATIOS:
        cells = []
        for count in layers:
            a, b = results[count][slower], results[count][faster]
            cells.append("skipped" if a is None or b is None else f"{a / b:,.1f}x")
        print(f"| {label} | " + " | ".join(cells) + " |")

    first, final = layers[0], layers[-1]
    print(f"\n| growth from {leaves[first]:,} to {leaves[final]:,} leaves | factor |\n|---|---|")
    for name in [n for n in results[first] if n.startswith("ours")] + ["floor jax.tree.structure"]:
        a, b = results[first][name], results[final][name]
        assert a is not None and b is not None
        print(f"| {name} | {b / a:.1f}x |")

    plain, with_set = trace_cost()
    print("\n| tracing + lowering a jitted step (100 layers) | time |\n|---|---|")
    print(f"| without set | {format_seconds(plain)} |\n| with an in-graph set | {format_seconds(with_set)} |")
    first_call_section(layers[-1])
    migrate_section(layers[-1] * 2)
    memory_section(layers[-1] * 2)
    metrics_section(500 if arguments.quick else 2000)
    cli_section(layers[-1])
    values_section(
        layers[-1], 1000 if not arguments.quick else 100, 1 << 26 if not arguments.quick else 1 << 20
    )


if __name__ == "__main__":
    main()
