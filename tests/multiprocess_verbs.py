"""One process of test_multiprocess.py: argv is the number of processes, the number of sharded
leaves of the parameters (besides one large), a checkpoint directory all of them share, then this
process's id and the port (as helpers.run_processes appends them).

Every verb is called by every process on an optax state whose moments are sharded over the
processes' devices, with a NaN planted in the last process's shard; each answer is compared with
the answer the same verb gives on the gathered values held by one device of this process (the
single-process answer), and printed as one JSON line for the parent to compare across processes.
"""

import json
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optree_inspect as oi


def gathered(tree: Any) -> Any:
    """The tree's values on this process's first device: a single-process copy."""
    device = jax.local_devices()[0]

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = multihost_utils.process_allgather(x, tiled=True)
        return jax.device_put(x, device) if isinstance(x, jax.Array | np.ndarray) else x

    return jax.tree.map(one, tree)


def unplaced(text: str) -> str:
    """A report without the placements that only the sharded state has."""
    return re.sub(r" @ (P\([^)]*\)|replicated\(\d+\)|device \d+)", "", text)


def close(a: Any, b: Any) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.allclose(a, b, rtol=1e-5, atol=0, equal_nan=True))


def main(process_id: int, processes: int, leaves: int, directory: str, port: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if hasattr(jax.config, "jax_enable_empty_arrays"):  # before JAX 0.7: arrays with no shard here
        jax.config.update("jax_enable_empty_arrays", True)
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process_id)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    # the values are made with NumPy: a `jnp` call per leaf shape compiles a program per shape
    values = {f"w{i:02d}": np.full((8 * (i + 1), 4), 0.5 + i, np.float32) for i in range(leaves)}
    values["big"] = np.linspace(-1.0, 1.0, 512 * 256, dtype=np.float32).reshape(512, 256)
    params = jax.device_put(values, rows)
    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
    tx = optax.chain(optax.clip_by_global_norm(1.0), adamw)
    shardings = jax.tree.map(lambda x: rows if x.ndim else replicated, jax.eval_shape(tx.init, params))

    def step(state: Any, grads: Any) -> Any:
        # adamw's step alone: the clipping keeps no state, and its global norm of this many
        # sharded leaves takes seconds to compile
        return (state[0], adamw.update(grads, state[1], grads)[1])

    grad_values = {name: value * np.float32(0.1) for name, value in values.items()}
    grads = jax.device_put(grad_values, rows)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    state = jax.jit(step, out_shardings=shardings)(state, grads)
    assert not state[1].inner_state[0].mu["w03"].is_fully_addressable
    last_row = 8 * 4 - 1  # on the last device: the last process's shard
    state = oi.set(state, "mu.w03", lambda x: x.at[last_row, 1].set(jnp.nan))
    stepped = jax.jit(step, out_shardings=shardings)(state, grads)
    local, local_stepped = gathered(state), gathered(stepped)
    device = jax.local_devices()[0]
    local_params, local_grads = jax.device_put((values, grad_values), device)

    answers: dict[str, Any] = {}
    wrong: list[str] = []

    def same(name: str, ours: Any, theirs: Any) -> None:
        answers[name] = ours
        if ours != theirs:
            wrong.append(f"{name}: {str(ours)[:600]!r} != {str(theirs)[:600]!r}")

    # reading and finding
    same("find", [str(m.path) for m in oi.find(state, "mu.*")], [str(m.path) for m in oi.find(local, "mu.*")])
    same(
        "hyperparams",
        {k: float(v) for k, v in oi.hyperparams(state).items()},
        {k: float(v) for k, v in oi.hyperparams(local).items()},
    )
    picked = oi.get(state, "mu.w03")
    if not np.array_equal(gathered(picked), oi.get(local, "mu.w03"), equal_nan=True):
        wrong.append("get")

    # statistics, reports, diffs
    ours, theirs = oi.stats(state), oi.stats(local)
    answers["stats"] = json.dumps(ours, default=float, sort_keys=True)
    for name in theirs:
        for key, value in theirs[name].items():
            spread = 1e-5 * abs(float(theirs[name]["rms"]))  # a mean of values that cancel
            if not (close(ours[name][key], value) or abs(float(ours[name][key]) - float(value)) <= spread):
                wrong.append(f"stats[{name}][{key}]: {ours[name][key]} != {value}")
    same("check", str(oi.check(state)), str(oi.check(local)))
    same(
        "check grads",
        str(oi.check(state, params=params, grads=grads)),
        str(oi.check(local, params=local_params, grads=local_grads)),
    )
    same("describe", unplaced(str(oi.describe(state, stats=True))), str(oi.describe(local, stats=True)))
    same("diff", unplaced(str(oi.diff(state, stepped))), str(oi.diff(local, local_stepped)))
    same("diff equal", str(oi.diff(state, state)), "No differences.")

    # an array on one device of the last process only (a pipeline stage's), beside sharded ones
    stage = jax.make_array_from_callback(
        (4,),
        jax.sharding.SingleDeviceSharding(jax.devices()[-1]),
        lambda index: np.array([1, np.inf, 3, 4], np.float32)[index],
        dtype=np.float32,
    )
    staged = {"stage": stage, "mu": oi.get(state, "mu")}
    answers["stage check"] = str(oi.check(staged))
    if "\nnonfinite: stage: 1 Inf in 4 elements (f32[4])\n" not in answers["stage check"]:
        wrong.append(f"stage check: {answers['stage check']}")
    if float(oi.stats(staged)["stage"]["max"]) != 4.0:
        wrong.append("stage stats")
    # values of each process's own, NaN on the last process alone, beside sharded ones: each
    # process reports its own, and none waits for the others
    last = jax.process_index() == jax.process_count() - 1
    own = {
        "loss": float("nan") if last else 0.5,
        "local": jax.device_put(np.array([np.nan if last else 1.0, 2.0], np.float32), device),
        "mu": oi.get(state, "mu"),
    }
    own_check = str(oi.check(own))
    for line in (
        "nonfinite: loss: 1 NaN in 1 element (float)",
        "nonfinite: local: 1 NaN in 2 elements (f32[2])",
    ):
        if (line in own_check) is not last:
            wrong.append(f"own values' check: {own_check}")
    # arrays alone, so that diff first asks whether the trees are equal copies: the last process's
    # own array differs, and that process alone reports it
    mine = jax.device_put(np.array([1.0, 2.0], np.float32), device)
    copied = {"local": mine, "big": oi.get(state, "mu.big")}
    changed = {**copied, "local": jax.device_put(np.array([1.0, 3.0 if last else 2.0], np.float32), device)}
    own_diff = str(oi.diff(copied, changed))
    expected_diff = "['local']: value: 1 of 2 elements differ" if last else "No differences."
    if not own_diff.startswith(expected_diff):
        wrong.append(f"own values' diff: {own_diff}")
    try:
        oi.diff({"stage": jax.device_put(jnp.zeros(4), rows)}, {"stage": stage})
        wrong.append("diff across device sets: no error")
    except oi.InvalidArgumentError:
        pass

    # editing: a function of a sharded moment, and a sharded value
    doubled = oi.set(state, "nu.w05", lambda x: x * 2)
    same(
        "set function",
        np.asarray(gathered(oi.get(doubled, "nu.w05"))).tolist(),
        (np.asarray(oi.get(local, "nu.w05")) * 2).tolist(),
    )
    assert oi.get(doubled, "nu.w05").sharding == rows
    value = jax.device_put(jnp.arange(48 * 4, dtype=jnp.float32).reshape(48, 4), rows)
    placed = oi.set(state, "nu.w05", value)
    same(
        "set sharded value",
        np.asarray(gathered(oi.get(placed, "nu.w05"))).tolist(),
        np.arange(48 * 4.0).reshape(48, 4).tolist(),
    )

    # memory and metrics
    answers["memory"] = str(oi.memory(state))
    usage = oi.memory(state).roles
    answers["memory roles"] = {name: (u.fullest_device_bytes, u.total_bytes) for name, u in usage.items()}
    ours_metrics = oi.metrics(state, params=params, grads=grads)
    answers["metrics"] = {key: float(np.asarray(value)) for key, value in ours_metrics.items()}

    def rms(*trees: Any) -> float:
        arrays = [np.asarray(x, np.float64) for tree in trees for x in jax.tree.leaves(tree)]
        return float(np.sqrt(sum((x * x).sum() for x in arrays) / sum(x.size for x in arrays)))

    moments = local[1].inner_state[0]
    expected = {
        "all/params_rms": rms(local_params),
        "all/grads_rms": rms(local_grads),
        "big/params_rms": rms(local_params["big"]),
        "w05/nu_rms": rms(moments.nu["w05"]),
        "all/nu_rms": rms(moments.nu),
        "all/mu_rms": np.nan,
        "w03/nonfinite": 1,
        "all/nonfinite": 1,
        "w04/nonfinite": 0,
        "learning_rate": 1e-3,
    }
    for key, value in expected.items():
        if not close(answers["metrics"][key], value):
            wrong.append(f"metrics[{key}]: {answers['metrics'][key]} != {value}")
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(f"{directory}/state", state)
    checkpointer.wait_until_finished()
    multihost_utils.sync_global_devices("saved")
    raw = oi.load(f"{directory}/state", arrays=True)
    restored = oi.restore_like(raw, like=state)
    same("restore_like", str(oi.diff(restored, state)), "No differences.")
    assert oi.get(restored, "mu.w03").sharding == rows
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    into_abstract = oi.restore_like(state, like=abstract)
    same("restore_like abstract", str(oi.diff(into_abstract, state)), "No differences.")
    same("restore_like local", str(oi.diff(gathered(restored), local)), "No differences.")

    # migrate onto a sharded state of another optimizer
    other = optax.chain(
        optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    )
    other_shardings = jax.tree.map(
        lambda x: rows if x.ndim else replicated, jax.eval_shape(other.init, params)
    )
    like = jax.jit(other.init, out_shardings=other_shardings)(params)
    moved = oi.migrate(state, like)
    local_moved = oi.migrate(local, gathered(like))
    same("migrate plan", str(moved), str(local_moved))
    same("migrate", str(oi.diff(gathered(moved.state), local_moved.state)), "No differences.")
    assert oi.get(moved.state, "mu.w03").sharding == rows

    oi.print_once("printed once")
    print(
        "ANSWERS "
        + json.dumps({"process": jax.process_index(), "wrong": wrong, "answers": answers}, default=str),
        flush=True,
    )


if __name__ == "__main__":
    main(int(sys.argv[4]), int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[5])
