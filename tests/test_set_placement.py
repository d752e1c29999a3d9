"""set's `placement=`: keep a leaf's sharding, or move it to the value's (docs/editing.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optree_inspect as oi
from helpers import nnx_optimizer, run_two_processes

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def lines_of(script: str, *args: str, devices: int = 8) -> dict[str, str]:
    env = {**ENV, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


# Eight devices: moments moved to their parameters' shardings ---------------------------------------

MESH_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import optree_inspect as oi

    weak = {"lr": jnp.asarray(0.1), "v": jax.lax.broadcast(jnp.asarray(1.0), (8, 4))}  # weak float32
    jax.config.update("jax_enable_x64", True)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    grid, replicated = NamedSharding(mesh, P("data", "model")), NamedSharding(mesh, P())
    w = jnp.arange(32, dtype=jnp.float32).reshape(8, 4)
    params = {"w": jax.device_put(w, grid), "b": jax.device_put(jnp.ones(4, jnp.float32), replicated)}
    state = jax.jit(optax.adam(1e-3).init)(params)  # every moment on device 0
    state = oi.set(state, {"mu.w": w + 0.5, "nu.w": w * 2})  # values to keep; still on device 0
    to_param = lambda x: jax.device_put(x, params["w"].sharding)
    same = lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b)))

    def where(x):
        s = x.sharding
        kind = f"P{tuple(s.spec)}" if isinstance(s, NamedSharding) else f"dev{next(iter(s.device_set)).id}"
        weak, committed = "weak" if x.weak_type else "strong", "committed" if x.committed else "free"
        return f"{kind}/{x.dtype}/{weak}/{committed}"

    before = jax.tree.map(lambda x: x, state)
    print("a_before", where(state[0].mu["w"]))
    moved = oi.set(state, "mu.w", to_param, placement="value")
    print("a_moved", where(moved[0].mu["w"]), moved[0].mu["w"].sharding == params["w"].sharding,
          same(moved[0].mu["w"], state[0].mu["w"]), moved[0].nu is state[0].nu)
    print("i_input", where(state[0].mu["w"]), all(a is b for a, b in zip(
        jax.tree.leaves(state), jax.tree.leaves(before))))

    bad = jax.device_put(state, replicated)  # every moment replicated beside the sharded params
    fixed = oi.set(bad, "nu.w", to_param, placement="value")
    print("b_replicated", where(bad[0].nu["w"]), where(fixed[0].nu["w"]),
          same(fixed[0].nu["w"], bad[0].nu["w"]))

    value = jax.device_put(jnp.full((8, 4), 2.0, jnp.float32), grid)
    print("c_keep", where(oi.set(state, "mu.w", value)[0].mu["w"]),
          where(oi.set(bad, "mu.w", value, placement="keep")[0].mu["w"]))

    wide = jax.device_put(jnp.arange(32, dtype=jnp.float64).reshape(8, 4) / 3, grid)
    cast = oi.set(state, "mu.w", wide, placement="value")[0].mu["w"]
    print("d_float64", where(cast), same(cast, wide.astype(jnp.float32)))
    try:
        oi.set(state, "mu.w", jax.device_put(jnp.full((8, 4), 1e39), grid), placement="value")
    except oi.StructureError as error:
        print("d_range", "out of range" in str(error))
    print("d_scalar", where(oi.set(state, "mu.w", jax.device_put(jnp.float64(0.5), replicated),
          placement="value")[0].mu["w"]), where(oi.set(state, "mu.w", jax.device_put(jnp.int32(3),
          jax.devices()[5]), placement="value")[0].mu["w"]))
    weakened = oi.set(weak, {"lr": jax.device_put(jnp.float64(0.2), replicated), "v": wide},
                      placement="value")
    print("d_weak", where(weak["lr"]), where(weakened["lr"]), where(weakened["v"]), same(weakened["v"], cast))

    shardings = jax.tree.map(lambda p: p.sharding, params)
    subtree = oi.set(state, "mu", lambda mu: jax.device_put(mu, shardings), placement="value")[0].mu
    print("e_subtree", where(subtree["w"]), where(subtree["b"]), same(subtree["w"], state[0].mu["w"]))
    mixed = {"w": wide, "b": jax.device_put(jnp.ones(4, jnp.float32), jax.devices()[6])}
    mixed = oi.set(state, "nu", mixed, placement="value")[0].nu
    print("e_mixed", where(mixed["w"]), where(mixed["b"]))

    both = oi.set(state, {"mu.w": to_param, "nu.b": jax.device_put(jnp.zeros(4), replicated)},
                  placement="value")
    print("f_mapping", where(both[0].mu["w"]), where(both[0].nu["b"]), where(both[0].nu["w"]))

    @jax.jit
    def step(state):
        return oi.set(state, "mu.w", lambda x: jax.device_put(x * 2, grid), placement="value")

    print("h_jit", same(step(state)[0].mu["w"], 2 * np.asarray(state[0].mu["w"])))
    """
)


def test_moments_move_to_their_parameters_shardings_on_eight_devices() -> None:
    lines = lines_of(MESH_SCRIPT)
    grid, replicated = "P('data', 'model')/float32/strong/committed", "P()/float32/strong/committed"
    # (a) a moment jax.jit(tx.init) left on device 0 ends on its parameter's sharding, values kept
    assert lines["a_before"] == "dev0/float32/strong/free"
    assert lines["a_moved"] == f"{grid} True True True"
    assert lines["i_input"] == "dev0/float32/strong/free True"
    # (b) a replicated moment beside sharded parameters
    assert lines["b_replicated"] == f"{replicated} {grid} True"
    # (c) the default, and "keep" spelled out, keep the leaf where it was
    assert lines["c_keep"] == f"dev0/float32/strong/committed {replicated}"
    # (d) the dtype and weak type are the leaf's, the placement the value's; a scalar broadcasts
    assert lines["d_float64"] == f"{grid} True"
    assert lines["d_range"] == "True"
    assert lines["d_scalar"] == f"{replicated} dev5/float32/strong/committed"
    weak = "float32/weak/committed"
    assert lines["d_weak"] == f"dev0/float32/weak/free P()/{weak} P('data', 'model')/{weak} True"
    # (e) a subtree value: each leaf on its own value's placement
    assert lines["e_subtree"] == f"{grid} {replicated} True"
    assert lines["e_mixed"] == f"{grid} dev6/float32/strong/committed"
    # (f) every edit of a mapping follows placement=
    assert lines["f_mapping"] == f"{grid} {replicated} dev0/float32/strong/free"
    # (h) under jit the placement is the program's: no error
    assert lines["h_jit"] == "True"


# Two processes: a value no process can read whole ----------------------------------------------

PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import optree_inspect as oi

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    state = jax.jit(optax.adam(1e-3).init, out_shardings=replicated)({"w": jnp.ones((8, 4), jnp.bfloat16)})
    filled = jax.jit(lambda: jnp.full((8, 4), 0.5, jnp.float32), out_shardings=rows)()
    with jax.transfer_guard("disallow"):
        new = oi.set(state, {"mu.w": lambda x: jax.device_put(x, rows), "nu.w": filled}, placement="value")
    mu, nu = new[0].mu["w"], new[0].nu["w"]
    print("moved", mu.is_fully_addressable, mu.sharding == rows, nu.sharding == rows, nu.dtype)
    print("values", float(nu.addressable_shards[0].data[0, 0]))
    huge = jax.jit(lambda: jnp.full((8, 4), 3.4e38, jnp.float32), out_shardings=rows)()
    try:
        oi.set(state, "nu.w", huge, placement="value")
    except oi.StructureError as error:
        print("range", "out of range" in str(error))
    """
)


def test_values_of_several_processes_are_placed_without_a_host_copy() -> None:
    env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    for out in run_two_processes(["-c", PROCESS_SCRIPT], env):
        printed = set(out.splitlines())  # gloo prints its own lines too
        assert {"moved False True True bfloat16", "values 0.5", "range True"} <= printed, out


# One device, in process ------------------------------------------------------------------------


def moment_state() -> Any:
    return optax.adam(1e-3).init({"w": jnp.arange(6.0).reshape(2, 3)})


@pytest.mark.parametrize(
    "value",
    [np.ones((2, 3), np.float32), np.float32(1.0), 1.0, 1],
    ids=["numpy", "numpy-scalar", "python-float", "python-int"],
)
def test_a_value_with_no_placement_is_refused(value: Any) -> None:
    state = moment_state()
    with pytest.raises(oi.InvalidArgumentError, match=r"jax\.device_put\(value, sharding\)") as caught:
        oi.set(state, "mu.w", value, placement="value")
    assert "[0].mu['w']" in str(caught.value) and len(str(caught.value)) < 400
    with pytest.raises(oi.InvalidArgumentError, match="no placement"):
        oi.set(state, "mu", {"w": value}, placement="value")  # inside a subtree too
    assert oi.set(state, "mu.w", value)[0].mu["w"].dtype == jnp.float32  # "keep" takes it


@pytest.mark.parametrize("placement", ["values", "Value", "", None, 0, ("keep",), np.array(["keep"])])
def test_other_placements_are_refused_naming_the_two(placement: Any) -> None:
    with pytest.raises(oi.InvalidArgumentError, match=r"'keep'.*'value'"):
        oi.set(moment_state(), "mu.w", 0.0, placement=placement)
    with pytest.raises(TypeError):  # InvalidArgumentError is a TypeError
        oi.set(moment_state(), {"mu.w": 0.0}, placement=placement)


def test_a_scalar_value_broadcasts_onto_its_own_placement() -> None:
    scalar = jax.device_put(jnp.float32(2.0), jax.devices()[0])
    moved = oi.set(moment_state(), "mu.w", scalar, placement="value")[0].mu["w"]
    assert moved.shape == (2, 3) and moved.sharding == scalar.sharding and float(moved[1, 2]) == 2.0


def test_the_leaf_takes_the_values_commitment_on_one_device() -> None:
    """One device: the placements differ in commitment alone. A committed leaf given an
    uncommitted value stays committed with "keep" and becomes uncommitted with "value"."""
    state = jax.device_put(moment_state(), jax.devices()[0])
    value = jnp.full((2, 3), 2.0, jnp.bfloat16)
    assert state[0].mu["w"].committed and not value.committed
    moved = oi.set(state, "mu.w", value, placement="value")[0].mu["w"]
    assert not moved.committed and moved.dtype == jnp.float32 and float(moved[0, 0]) == 2.0
    assert oi.set(state, "mu.w", value)[0].mu["w"].committed
    assert state[0].mu["w"].committed and float(state[0].mu["w"][0, 0]) == 0.0  # input unchanged
    broadcast = oi.set(state, "mu.w", jnp.float32(3.0), placement="value")[0].mu["w"]
    assert broadcast.shape == (2, 3) and not broadcast.committed


def test_host_and_abstract_leaves_are_cast_as_with_keep() -> None:
    host = {"n": 3, "a": np.zeros(2, np.float32), "s": jax.ShapeDtypeStruct((2,), jnp.float32)}
    new = oi.set(host, {"n": jnp.int32(4), "a": np.ones(2)}, placement="value")
    assert type(new["n"]) is int and new["n"] == 4 and isinstance(new["a"], np.ndarray)
    with pytest.raises(oi.LeafTypeError, match="abstract"):
        oi.set(host, "s", jnp.ones(2), placement="value")


def test_under_jit_value_is_keep_for_tracers() -> None:
    state = moment_state()
    host = np.full((2, 3), 3.0, np.float32)

    @jax.jit
    def step(state: Any) -> Any:
        doubled = oi.set(state, "mu.w", lambda x: x * 2 + 1, placement="value")
        return oi.set(doubled, "nu.w", host, placement="value")  # a host value, traced leaf: no error

    new = step(state)
    np.testing.assert_array_equal(new[0].mu["w"], np.ones((2, 3)))
    np.testing.assert_array_equal(new[0].nu["w"], host)
    assert float(state[0].mu["w"][0, 0]) == 0.0


def test_nnx_variables_stay_variables() -> None:
    pytest.importorskip("flax.nnx")
    device = jax.devices()[0]
    live = nnx_optimizer().opt_state
    shape = oi.get(live, "mu.linear.kernel").shape
    state = oi.set(live, "mu.linear.kernel", jax.device_put(jnp.zeros(shape), device))  # committed
    old = oi.get(state, "mu.linear.kernel", variables=True)
    new_state = oi.set(state, "mu.linear.kernel", jnp.full(shape, 0.5), placement="value")
    new = oi.get(new_state, "mu.linear.kernel", variables=True)
    assert type(new) is type(old) and new.get_metadata() == old.get_metadata()
    value = oi.get(new_state, "mu.linear.kernel")  # the array the Variable holds
    assert not value.committed and float(value[0, 0]) == 0.5
    assert oi.get(state, "mu.linear.kernel").committed

    restored = {"opt_state": {"0": {"mu": {"w": {"value": jnp.zeros(3)}}, "count": {"value": jnp.int32(0)}}}}
    restored = jax.device_put(restored, device)
    edited = oi.set(restored, "mu.w", jnp.float32(5.0), placement="value")
    assert list(edited["opt_state"]["0"]["mu"]["w"]) == ["value"]
    placed = edited["opt_state"]["0"]["mu"]["w"]["value"]
    assert not placed.committed and placed.shape == (3,) and float(placed[0]) == 5.0
    assert restored["opt_state"]["0"]["mu"]["w"]["value"].committed
