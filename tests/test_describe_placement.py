"""describe's placement marks (docs/reading.md): `@ device N` on an array on one device beside arrays
over several devices, and `other shardings` on a `like` or run row placed otherwise than the row it
is like. Multi-device cases run in one subprocess with 8 host devices."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

import optree_inspect as oi

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding, PartitionSpec as P
    import optree_inspect as oi

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    specs = {"w": P("data", "model"), "b": P("model")}
    params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16)}
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
    tx = optax.adam(1e-3)
    replicated = NamedSharding(mesh, P())
    like_params = lambda tree: jax.tree.map(lambda m, p: jax.device_put(m, p.sharding), tree, params)
    on = lambda tree, where: jax.tree.map(lambda x: jax.device_put(x, where), tree)
    adam = tx.init(params)[0]
    alike = adam._replace(count=jax.device_put(adam.count, replicated), mu=like_params(adam.mu),
                          nu=like_params(adam.nu))
    cases = {
        "alike": alike,
        "replicated": alike._replace(nu=on(alike.nu, replicated)),
        "jit": jax.jit(tx.init)(params)[0],
        "device3": alike._replace(nu=on(alike.nu, jax.devices()[3])),
    }
    out = {}
    for name, moments in cases.items():
        description = oi.describe({"opt": (moments, optax.EmptyState()), "params": params})
        out[name] = {
            "text": str(description),
            "html": description._repr_html_(),
            "dict": description.to_dict(),
            "rows": {r.query: [r.leaf and r.leaf.sharding, r.leaves and r.leaves.other_shardings]
                     for r in description},
        }
    unsharded = {"w": jnp.ones((8, 16)), "b": jnp.ones(16)}
    out["single"] = str(oi.describe({"opt": jax.jit(tx.init)(unsharded), "params": unsharded}))
    layers = [like_params(params) for _ in range(5)]
    out["run_alike"] = str(oi.describe({"layers": layers}))
    layers[3] = on(layers[3], replicated)
    out["run_other"] = str(oi.describe({"layers": layers}))
    abstract = {
        "count": jax.ShapeDtypeStruct((), jnp.int32, sharding=SingleDeviceSharding(jax.devices()[5])),
        "w": jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, specs["w"])),
        "bare": jax.ShapeDtypeStruct((3,), jnp.float32),
    }
    out["abstract"] = str(oi.describe(abstract))
    print(json.dumps(out))
    """
)


@functools.cache
def eight_devices() -> dict[str, Any]:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_moments_placed_like_their_params_are_not_marked() -> None:
    case = eight_devices()["alike"]
    assert case["text"] == textwrap.dedent(
        """\
        dict: 7 leaves, f32/i32, 1.69 KB
          opt: tuple
            [0]: ScaleByAdamState
              count: i32[] = 0 @ replicated(8)
              mu: dict
                b: f32[16] @ P('model',)
                w: f32[8,16] @ P('data', 'model')
              nu: like ['opt'][0].mu, 2 leaves, f32, 576 B
            [1]: EmptyState
          params: like ['opt'][0].mu, 2 leaves, f32, 576 B"""
    )
    assert case["rows"]["nu"] == [None, False] and case["rows"]["params"] == [None, False]
    assert "other shardings" not in case["html"] and "@ device" not in case["html"]


@pytest.mark.parametrize(
    ("name", "marked", "other"),
    [("replicated", "nu", ["nu"]), ("device3", "nu", ["nu"]), ("jit", "params", ["params"])],
)
def test_a_like_row_placed_otherwise_says_so(name: str, marked: str, other: list[str]) -> None:
    case = eight_devices()[name]
    line = next(line for line in case["text"].splitlines() if line.strip().startswith(f"{marked}:"))
    assert line.endswith(", other shardings, 2 leaves, f32, 576 B")
    assert [query for query, (_, flag) in case["rows"].items() if flag] == other
    assert case["dict"][{"nu": "['opt'][0].nu", "params": "['params']"}[marked]]["summary"].startswith(
        "like ['opt'][0].mu, other shardings, "
    )
    assert "other shardings, 2 leaves" in case["html"]


def test_arrays_on_one_device_beside_sharded_ones_show_their_device() -> None:
    case = eight_devices()["jit"]  # `jax.jit(tx.init)` puts every moment on device 0
    lines = case["text"].splitlines()
    assert "      count: i32[] = 0 @ device 0" in lines
    assert "        b: f32[16] @ device 0" in lines and "        w: f32[8,16] @ device 0" in lines
    assert "      nu: like ['opt'][0].mu, 2 leaves, f32, 576 B" in lines  # both on device 0
    assert case["rows"]["count"][0] == case["rows"]["mu.w"][0] == "@ device 0"
    assert "w</span>: f32[8,16] @ device 0<code" in case["html"]
    assert case["dict"]["['opt'][0].count"]["summary"] == "i32[] = 0 @ device 0"
    assert "@ device" not in eight_devices()["replicated"]["text"]  # its counter is replicated


def test_a_tree_on_one_device_is_unmarked_on_a_host_with_several() -> None:
    text = eight_devices()["single"]
    assert "@" not in text and "other shardings" not in text
    assert "  params: like ['opt'][0].mu, 2 leaves, f32, 576 B" in text.splitlines()


def test_a_run_member_placed_otherwise_marks_the_run() -> None:
    alike, other = eight_devices()["run_alike"], eight_devices()["run_other"]
    assert "    [1] ... [4]: 4 like ['layers'][0], 8 leaves, f32, 2.25 KB" in alike.splitlines()
    shown = "    [1] ... [4]: 4 like ['layers'][0], other shardings, 8 leaves, f32, 2.25 KB"
    assert shown in other.splitlines()


def test_an_abstract_leaf_with_a_one_device_sharding_shows_its_device() -> None:
    lines = eight_devices()["abstract"].splitlines()
    assert lines[1:] == ["  bare: f32[3]", "  count: i32[] @ device 5", "  w: f32[8,16] @ P('data', 'model')"]


def _abstract_state(nu_specs: tuple[PartitionSpec, PartitionSpec], count_mesh: AbstractMesh | None) -> Any:
    """A state as `oi.load` reads a checkpoint saved on 8 devices in a process without them."""
    mesh = AbstractMesh((2, 4), ("data", "model"))

    def leaf(shape: tuple[int, ...], spec: PartitionSpec) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, spec))

    count_sharding = None if count_mesh is None else NamedSharding(count_mesh, PartitionSpec())
    return {
        "count": jax.ShapeDtypeStruct((), jnp.int32, sharding=count_sharding),
        "mu": {"b": leaf((16,), PartitionSpec("model")), "w": leaf((8, 16), PartitionSpec("data", "model"))},
        "nu": {"b": leaf((16,), nu_specs[0]), "w": leaf((8, 16), nu_specs[1])},
    }


@pytest.mark.parametrize("count_mesh", [AbstractMesh((1,), ("device",)), None])
def test_abstract_mesh_shardings_are_shown(count_mesh: AbstractMesh | None) -> None:
    lines = str(oi.describe(_abstract_state((PartitionSpec(), PartitionSpec()), count_mesh))).splitlines()
    count = "  count: i32[] @ device 0" if count_mesh is not None else "  count: i32[]"
    mu = ["  mu: dict", "    b: f32[16] @ P('model',)", "    w: f32[8,16] @ P('data', 'model')"]
    assert lines[1:5] == [count, *mu]
    assert lines[5] == "  nu: like ['mu'], other shardings, 2 leaves, f32, 576 B"
    specs = {
        "one leaf apart": ((PartitionSpec("data"), PartitionSpec("data", "model")), True),
        "alike": ((PartitionSpec("model"), PartitionSpec("data", "model")), False),
        "alike, spelled as a tuple": ((PartitionSpec(("model",)), PartitionSpec("data", "model")), False),
    }
    for name, (nu_specs, other) in specs.items():
        line = str(oi.describe(_abstract_state(nu_specs, count_mesh))).splitlines()[5]
        shown = "other shardings, " if other else ""
        assert line == f"  nu: like ['mu'], {shown}2 leaves, f32, 576 B", name


def test_a_tree_on_one_device_reads_as_before() -> None:
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    state = optax.adam(1e-3).init(params)
    one = AbstractMesh((1,), ("device",))

    def abstract(sharded: bool) -> Any:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=NamedSharding(one, PartitionSpec()) if sharded else None
            ),
            state,
        )

    assert str(oi.describe(abstract(True))) == str(oi.describe(abstract(False)))
    text = str(oi.describe(state))
    assert "@" not in text and "other shardings" not in text
    assert not any(row.leaves and row.leaves.other_shardings for row in oi.describe(state))
