"""Every verb on a multi-process JAX run (processes joined by `jax.distributed` on this host, CPU
collectives by gloo): the same answer on every process, equal to the single-process answer, a NaN
in one process's shard found by all, nothing hanging (each process has a timeout); and the
checkpoint they saved read by one plain process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import run_processes

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_verbs.py")


def _answers(outputs: list[str]) -> list[dict]:
    found = []
    for out in outputs:
        [line] = [line for line in out.splitlines() if line.startswith("ANSWERS ")]
        found.append(json.loads(line.removeprefix("ANSWERS ")))
    return found


@pytest.mark.parametrize(("processes", "devices", "leaves"), [(2, 2, 64), (4, 1, 16)])
def test_every_verb_gives_every_process_the_single_process_answer(
    processes: int, devices: int, leaves: int, tmp_path: Path
) -> None:
    """64 sharded leaves: more than a small host has threads for programs in flight."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    outputs = run_processes([WORKER, str(processes), str(leaves), str(tmp_path)], env, processes, timeout=400)
    answers = _answers(outputs)
    assert sorted(a["process"] for a in answers) == list(range(processes))
    for answer in answers:
        assert answer["wrong"] == [], answer["wrong"]
    first = answers[0]["answers"]
    for answer in answers[1:]:
        assert answer["answers"] == first  # the same text and numbers on every process
    # the NaN planted in the last process's shard, seen by every process
    assert first["check"] == "nonfinite: mu.w03: 1 NaN in 128 elements (f32[32,4])"
    assert "[!! 1 NaN (first: mu.w03)" in first["describe"]
    assert first["metrics"]["w03/nonfinite"] == 1
    moments = (4 * 8 * leaves * (leaves + 1) // 2 + 512 * 256) * 4  # bytes, sharded evenly
    assert first["memory roles"]["mu"] == [moments // (processes * devices), moments]
    assert sum(out.count("printed once") for out in outputs) == 1

    # the checkpoint the processes saved, each its own shards, read by one plain process
    state = str(tmp_path / "state")
    cli = [str(Path(sys.executable).parent / "optree-inspect")]
    env_one = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    described = subprocess.run(
        [*cli, "describe", state], capture_output=True, text=True, env=env_one, timeout=120
    )
    assert described.returncode == 0, described.stderr[-2000:]
    assert f"mu: dict, {leaves + 1} keys, {leaves + 1} leaves, f32" in described.stdout
    checked = subprocess.run([*cli, "check", state], capture_output=True, text=True, env=env_one, timeout=120)
    assert checked.returncode == 1, checked.stderr[-2000:]
    assert checked.stdout.strip() == first["check"]


def test_many_large_sharded_leaves_in_one_process_of_two_devices() -> None:
    """64 large moments sharded over 2 devices: one compiled program each, with collectives,
    dispatched together, used to leave a 2-core host's threads waiting on one another."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, optax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import optree_inspect as oi
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rows = NamedSharding(mesh, P("data"))
        params = {f"w{i:02d}": jnp.full((256, 256), 0.5 + i) for i in range(64)}
        tx = optax.adam(1e-3)
        abstract = jax.eval_shape(tx.init, params)
        shardings = jax.tree.map(lambda x: rows if x.ndim else NamedSharding(mesh, P()), abstract)
        state = jax.jit(tx.init, out_shardings=shardings)(jax.device_put(params, rows))
        state = oi.set(state, "mu", lambda mu: jax.tree.map(lambda x: x + 1.0, mu))
        state = oi.set(state, "mu.w07", lambda x: x.at[-1, 3].set(jnp.nan))
        stepped = oi.set(state, "nu", lambda nu: jax.tree.map(lambda x: x + 2.0, nu))
        local = jax.device_put(state, jax.devices()[0])
        assert local[0].mu["w07"].sharding.device_set == {jax.devices()[0]}
        found = "nonfinite: mu.w07: 1 NaN in 65,536 elements (f32[256,256])"
        assert str(oi.check(state)) == str(oi.check(local)) == found
        ours, theirs = oi.stats(state), oi.stats(local)
        for name in theirs:
            for key, value in theirs[name].items():
                assert np.allclose(ours[name][key], value, rtol=1e-6, equal_nan=True), (name, key)
        assert "[!! 1 NaN (first: mu.w07)" in str(oi.describe(state, stats=True))
        assert str(oi.diff(state, stepped)).endswith("nu: value: 64 of 64 leaves changed, max |diff| 2")
        compiled = []
        event_name = "/jax/core/compile/backend_compile_duration"
        jax.monitoring.register_event_duration_secs_listener(
            lambda event, duration, **kw: compiled.append(event == event_name)
        )
        for leaves in (16, 64):  # of as many shapes: no program per shape, leaf or shard
            values = [np.full((256 + 2 * i, 256), i, np.float32) for i in range(leaves)]
            tree = {f"v{i}": jax.device_put(value, rows) for i, value in enumerate(values)}
            del compiled[:]
            oi.stats(tree)
            assert sum(compiled) <= 1, (leaves, sum(compiled))
        print("OK")
        """
    )
    _run_in_one_process(script, devices=2)


def test_arrays_on_several_devices_of_one_process_give_the_one_device_answer() -> None:
    """Shard by shard on a 2x4 mesh: every dtype, a replicated axis, a pair of two
    placements; the same statistics and differences as on one device."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import optree_inspect as oi
        mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
        def on(spec, x):
            return jax.device_put(x, NamedSharding(mesh, spec))
        big = np.linspace(-3, 3, 512 * 256, dtype=np.float32).reshape(512, 256)
        big[500, 7] = np.nan
        big[3, 250] = -np.inf
        tree = {
            "rows": on(P("data"), jnp.asarray(big)),
            "cols": on(P(None, "model"), jnp.asarray(big) * 2),
            "both": on(P("data", "model"), jnp.asarray(big).astype(jnp.bfloat16)),
            "ints": on(P("model"), jnp.arange(70004, dtype=jnp.int32) - 5),
            "flags": on(P("data"), jnp.arange(131072) % 3 == 0),
            "waves": on(P("model"), jnp.exp(1j * jnp.linspace(0, 6, 65536 * 2)).astype(jnp.complex64)),
            "count": on(P(), jnp.asarray(7)),
        }
        local = jax.device_put(tree, jax.devices()[0])
        ours, theirs = oi.stats(tree), oi.stats(local)
        assert ours.keys() == theirs.keys()
        for name in theirs:
            for key, value in theirs[name].items():
                found, spread = ours[name][key], 1e-6 * abs(theirs[name]["rms"])  # a mean may cancel
                same = np.allclose(found, value, rtol=1e-6, atol=spread, equal_nan=True)
                assert same, (name, key, found, value)
        assert str(oi.check(tree)) == str(oi.check(local))
        moved = dict(tree, rows=on(P(None, "model"), tree["rows"] + 1), ints=on(P(), tree["ints"] * 2))
        local_moved = jax.device_put(moved, jax.devices()[0])
        ours_diff = [row for row in oi.diff(tree, moved) if row.kind == "value"]
        theirs_diff = [row for row in oi.diff(local, local_moved) if row.kind == "value"]
        assert [r.summary for r in ours_diff] == [r.summary for r in theirs_diff], (ours_diff, theirs_diff)
        assert not oi.diff(tree, jax.tree.map(lambda x: x.copy(), tree), rtol=0)
        print("OK")
        """
    )
    _run_in_one_process(script, devices=8)


def _run_in_one_process(script: str, devices: int) -> None:
    """`script` in a fresh process with `devices` host devices, given 300 s; it prints OK."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "OK"
