"""`metrics`: a flat dict of scalars for a logger, equal to NumPy on the same arrays, with keys that
do not change when the optimizer is wrapped, held or restored."""

from __future__ import annotations

import copy
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from hypothesis import given, note, reject, settings
from hypothesis import strategies as st

import optree_inspect as oi
from helpers import as_restored, compilations, nnx_optimizer
from optree_inspect import metrics
from strategies import optimizers, params_trees

PARAMS = {
    "dense1": {"w": jnp.arange(12.0).reshape(3, 4) / 7, "b": jnp.linspace(-1.0, 1.0, 4)},
    "head": {"w": jnp.arange(8.0).reshape(4, 2) / -3},
}
GRADS = jax.tree.map(lambda p: jnp.cos(p) / 5, PARAMS)
LABELS = {"dense1": {"w": "decay", "b": "no_decay"}, "head": {"w": "decay"}}


def stepped(tx: optax.GradientTransformation, params: Any = PARAMS, steps: int = 2) -> tuple[Any, Any]:
    """The state after `steps` updates with `GRADS`, and the last updates."""
    state = tx.init(params)
    updates = None
    for _ in range(steps):
        updates, state = tx.update(GRADS, state, params)
    return state, updates


def rms(*arrays: Any) -> float:
    flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    return float(np.sqrt(np.mean(flat * flat)))


def reference(state: Any, updates: Any) -> dict[str, float]:
    """The values by NumPy: every element of a region together, not a mean over leaves."""
    moments = {"mu": state[0].mu, "nu": state[0].nu}
    trees = {"params": PARAMS, "grads": GRADS, "updates": updates, **moments}
    found = {}
    for region, pick in (
        ("all", lambda t: jax.tree.leaves(t)),
        ("dense1", lambda t: jax.tree.leaves(t["dense1"])),
    ):
        for name, tree in trees.items():
            found[f"{region}/{name}_rms"] = rms(*pick(tree))
        found[f"{region}/update_ratio"] = found[f"{region}/updates_rms"] / found[f"{region}/params_rms"]
    found["head/params_rms"] = rms(PARAMS["head"]["w"])
    found["head/mu_rms"] = rms(moments["mu"]["head"]["w"])
    return found


def test_values_equal_numpy_eagerly_and_in_a_jitted_step() -> None:
    tx = optax.adamw(1e-2, weight_decay=0.1)
    state, updates = stepped(tx)
    expected = reference(state, updates)
    eager = metrics(state, params=PARAMS, grads=GRADS, updates=updates)

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any, dict[str, Any]]:
        updates, state = tx.update(GRADS, state, params)
        return (
            optax.apply_updates(params, updates),
            state,
            metrics(state, params=params, grads=GRADS, updates=updates),
        )

    before, _ = stepped(tx, steps=1)
    _, _, traced = step(PARAMS, before)
    for found, kind in ((eager, np.generic), (traced, jax.Array)):
        for key, value in expected.items():
            assert isinstance(found[key], kind), key
            np.testing.assert_allclose(float(found[key]), value, rtol=2e-5, err_msg=key)
        assert int(found["all/nonfinite"]) == 0
    assert list(eager) == list(traced)


def test_an_rms_is_over_all_elements_of_a_region_not_a_mean_over_leaves() -> None:
    params = {"layer": {"big": jnp.ones(100), "small": jnp.full(1, 10.0)}, "bias": jnp.zeros(99)}
    found = metrics(optax.sgd(0.1).init(params), params=params)
    assert float(found["layer/params_rms"]) == pytest.approx(np.sqrt(200 / 101))
    assert float(found["all/params_rms"]) == pytest.approx(np.sqrt(200 / 200))


def test_bfloat16_and_complex_leaves_are_summed_in_float32_at_least() -> None:
    params = {"a": jnp.full((300,), 300.0, jnp.bfloat16), "c": jnp.array([3 + 4j, 0j], jnp.complex64)}
    found = metrics(optax.sgd(0.1).init(params), params=params)
    assert float(found["a/params_rms"]) == 300.0  # 300**2 * 300 overflows no float32
    assert float(found["c/params_rms"]) == pytest.approx(np.sqrt(25 / 2))


# Keys ------------------------------------------------------------------------------------------


def _keys_of(forms: dict[str, Any]) -> dict[str, list[str]]:
    return {name: list(found) for name, found in forms.items()}


def test_keys_do_not_change_when_wrapped_held_or_restored() -> None:
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=optax.linear_schedule(1e-3, 1e-4, 10))
    multi = optax.MultiSteps(adam, every_k_schedule=2)
    state = stepped(adam)[0]
    multi_state = stepped(multi.gradient_transformation())[0]
    held = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=multi)
    forms = {
        "adam": metrics(state, params=PARAMS, grads=GRADS),
        "multi_steps": metrics(multi_state, params=PARAMS, grads=GRADS),
        "restored": metrics(as_restored(state), params=PARAMS, grads=GRADS),
        "restored multi_steps": metrics(as_restored(multi_state), params=PARAMS, grads=GRADS),
        "train_state": metrics(held, grads=GRADS),
        "restored train_state": metrics(as_restored(held), grads=GRADS),
        "jitted": jax.jit(lambda s: metrics(s, grads=GRADS))(held),
    }
    keys = _keys_of(forms)
    assert all(found == keys["adam"] for found in keys.values()), keys
    assert "learning_rate" in keys["adam"] and "dense1/mu_rms" in keys["adam"]
    np.testing.assert_allclose(float(forms["restored"]["all/nu_rms"]), float(forms["adam"]["all/nu_rms"]))


def test_keys_of_a_partition_are_its_groups_in_every_form() -> None:
    tx = optax.partition(
        {"decay": optax.inject_hyperparams(optax.adamw)(1e-3), "no_decay": optax.sgd(1e-2)}, LABELS
    )
    state = stepped(tx)[0]
    multi = stepped(optax.MultiSteps(tx, 2).gradient_transformation())[0]
    held = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)
    forms = {
        "partition": metrics(state, params=PARAMS),
        "multi_steps": metrics(multi, params=PARAMS),
        "restored": metrics(as_restored(state), params=PARAMS),
        "train_state": metrics(held),
    }
    keys = _keys_of(forms)
    assert all(found == keys["partition"] for found in keys.values()), keys
    found = forms["partition"]
    # sgd keeps no moment: the parameters no other group's moments hold are its own
    assert float(found["no_decay/params_rms"]) == pytest.approx(rms(PARAMS["dense1"]["b"]))
    assert float(found["decay/params_rms"]) == pytest.approx(rms(PARAMS["dense1"]["w"], PARAMS["head"]["w"]))
    assert "decay/mu_rms" in found and "no_decay/mu_rms" not in found


def test_regions_given_make_a_partition_key_like_the_plain_optimizer() -> None:
    regions = {"weights": "w", "first": "dense1"}
    plain = stepped(optax.adam(1e-3))[0]
    grouped = stepped(optax.partition({"all_of_it": optax.adam(1e-3)}, lambda p: "all_of_it"))[0]
    assert list(metrics(plain, params=PARAMS, regions=regions)) == list(
        metrics(grouped, params=PARAMS, regions=regions)
    )


def test_a_checkpoint_loaded_without_its_types_keys_alike(tmp_path: pathlib.Path) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = optax.MultiSteps(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), 2)
    held = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", {"params": held.params, "opt_state": held.opt_state})
    checkpointer.wait_until_finished()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = oi.load(tmp_path / "state", arrays=True)
    live, read = metrics(held), metrics(loaded)
    assert list(read) == list(live)
    assert float(read["dense1/params_rms"]) == pytest.approx(float(live["dense1/params_rms"]))


def test_nnx_optimizer_state_in_every_form() -> None:
    from flax import nnx

    optimizer = nnx_optimizer()

    state = nnx.state(optimizer)
    found = metrics(state)
    assert {"kernel/mu_rms", "bias/nu_rms", "learning_rate"} <= set(found)  # below its one layer
    if hasattr(nnx, "to_pure_dict"):  # the form orbax restores without a target
        assert list(metrics(nnx.to_pure_dict(state))) == list(found)
    assert list(jax.jit(metrics)(state)) == list(found)


# Regions ---------------------------------------------------------------------------------------


def test_default_regions_are_the_top_level_keys_below_a_single_one() -> None:
    linen = {"params": PARAMS}  # flax's variables: one top-level key
    found = metrics(optax.adam(1e-3).init(linen), params=linen)
    assert {key.split("/")[0] for key in found} == {"all", "dense1", "head"}
    single = {"w": jnp.ones(3)}
    assert {key.split("/")[0] for key in metrics(optax.adam(1e-3).init(single), params=single)} == {
        "all",
        "w",
    }
    bare = jnp.ones(3)  # the params one array: no region but all
    assert {key.split("/")[0] for key in metrics(optax.adam(1e-3).init(bare), params=bare)} == {"all"}


@pytest.mark.parametrize(
    "query",
    ["w", "*.w", "['dense1']['w']", lambda path, node: getattr(node, "ndim", 0) == 2],
    ids=["pattern", "glob", "keystr", "predicate"],
)
def test_a_region_query_selects_the_same_parameters_in_every_tree(query: Any) -> None:
    state, updates = stepped(optax.adam(1e-3))
    found = metrics(state, params=PARAMS, grads=GRADS, updates=updates, regions={"r": query})
    names = (
        [("dense1", "w")]
        if isinstance(query, str) and query.startswith("[")
        else [("dense1", "w"), ("head", "w")]
    )
    trees = {"params": PARAMS, "grads": GRADS, "updates": updates, "mu": state[0].mu, "nu": state[0].nu}
    for field, tree in trees.items():
        expected = rms(*(tree[a][b] for a, b in names))
        assert float(found[f"r/{field}_rms"]) == pytest.approx(expected, rel=2e-5), field
    assert sorted({key.split("/")[0] for key in found}) == ["all", "r"]


def test_regions_may_overlap_and_a_type_query_works() -> None:
    found = metrics(
        optax.sgd(0.1).init(PARAMS), params=PARAMS, regions={"every": jax.Array, "first": "dense1"}
    )
    assert float(found["every/params_rms"]) == pytest.approx(float(found["all/params_rms"]))
    assert float(found["first/params_rms"]) == pytest.approx(rms(*jax.tree.leaves(PARAMS["dense1"])))


# What counts -----------------------------------------------------------------------------------


def test_multi_steps_accumulated_gradients_are_no_moment_but_are_counted() -> None:
    tx = optax.MultiSteps(optax.adam(1e-3), every_k_schedule=3).gradient_transformation()
    state = stepped(tx, steps=1)[0]
    assert float(jnp.abs(state.acc_grads["head"]["w"]).sum()) > 0
    found = metrics(state, params=PARAMS)
    assert not any("acc_grads" in key for key in found)
    assert {"all/mu_rms", "all/nu_rms"} <= set(found)
    first_nan = lambda x: x.reshape(-1).at[0].set(jnp.nan).reshape(x.shape)  # noqa: E731
    poisoned = state._replace(acc_grads=jax.tree.map(first_nan, state.acc_grads))
    assert int(metrics(poisoned, params=PARAMS)["all/nonfinite"]) == 3


@pytest.mark.parametrize("where", ["mu", "grads", "params"])
def test_nonfinite_counts_a_planted_nan_where_it_is(where: str) -> None:
    state, updates = stepped(optax.adam(1e-3))
    grads, params = GRADS, PARAMS
    if where == "mu":
        state = (
            state[0]._replace(mu=oi.set(state[0].mu, "head.w", lambda w: w.at[0, 0].set(jnp.nan))),
            *state[1:],
        )
    elif where == "grads":
        grads = oi.set(GRADS, "head.w", lambda w: w.at[:, 0].set(jnp.inf))
    else:
        params = oi.set(PARAMS, "head.w", lambda w: w.at[1, 1].set(jnp.nan))
    for found in (
        metrics(state, params=params, grads=grads, updates=updates),
        jax.jit(lambda s, p, g, u: metrics(s, params=p, grads=g, updates=u))(state, params, grads, updates),
    ):
        bad = {"mu": 1, "grads": 4, "params": 1}[where]
        assert (
            int(found["all/nonfinite"]),
            int(found["head/nonfinite"]),
            int(found["dense1/nonfinite"]),
        ) == (
            bad,
            bad,
            0,
        )
        assert not np.isfinite(float(found[f"head/{where}_rms"]))
        assert np.isfinite(float(found[f"dense1/{where}_rms"]))


def test_an_array_given_twice_is_counted_once() -> None:
    params = oi.set(PARAMS, "head.w", lambda w: w.at[0, 0].set(jnp.nan))
    held = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1))
    assert int(metrics(held)["all/nonfinite"]) == 1
    assert int(metrics(held, params=held.params)["all/nonfinite"]) == 1


def test_an_array_in_two_trees_counts_in_each_eagerly_and_under_jit() -> None:
    """`masked` passes a frozen parameter's gradient through as its update (the same array): it
    counts in both trees, as the same values in two arrays do, and under `jit` alike; the
    state's own params stand for the params given, whether the same arrays or not."""
    params = {"frozen": jnp.ones(3), "head": jnp.ones(3)}
    grads = {"frozen": jnp.array([jnp.nan, 1.0, 1.0]), "head": jnp.ones(3)}
    tx = optax.masked(optax.adam(1e-3), {"frozen": False, "head": True})
    updates, state = tx.update(grads, tx.init(params), params)
    assert updates["frozen"] is grads["frozen"]

    def count(state: Any, grads: Any, updates: Any) -> Any:
        return metrics(state, params=params, grads=grads, updates=updates)["all/nonfinite"]

    copied = jax.tree.map(jnp.array, updates)
    assert int(count(state, grads, updates)) == int(count(state, grads, copied)) == 2
    assert int(jax.jit(count)(state, grads, updates)) == 2
    held = train_state.TrainState.create(apply_fn=None, params=grads, tx=optax.sgd(0.1))
    assert int(jax.jit(lambda h, p: metrics(h, params=p)["all/nonfinite"])(held, held.params)) == 1
    assert int(metrics(held, params=jax.tree.map(jnp.array, held.params))["all/nonfinite"]) == 1


@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e-12, 1e20, 3e38, 0.0])
def test_an_rms_is_right_whatever_the_magnitudes(magnitude: float) -> None:
    """Squares that underflow or overflow float32 (adam's `nu` for gradients of 1e-10, parameters
    of 1e20), in float32, bfloat16, float16 and complex64 leaves: each RMS is the values', eagerly
    and in a jitted step, alone or beside ordinary values, and nothing is counted as non-finite."""
    params: dict[str, Any] = {"plain": jnp.full(4, 0.5)}
    expected: dict[str, float] = {}
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64):
        finfo = jnp.finfo(jnp.real(jnp.zeros((), dtype)).dtype)
        if magnitude and not float(finfo.tiny) <= magnitude <= float(finfo.max):
            continue  # not a normal number of this dtype
        name = jnp.dtype(dtype).name
        params[name] = jnp.full((5, 3), jnp.asarray(magnitude, dtype))
        expected[name] = float(np.abs(np.asarray(params[name][0, 0], np.complex128)))
    squares = sum(15 * value**2 for value in expected.values()) + 4 * 0.25
    state = optax.sgd(0.1).init(params)
    for found in (
        metrics(state, params=params),
        jax.jit(lambda s, p: metrics(s, params=p))(state, params),
    ):
        for name, value in expected.items():
            assert float(found[f"{name}/params_rms"]) == pytest.approx(value, rel=1e-6, abs=0), name
        assert float(found["all/params_rms"]) == pytest.approx(
            np.sqrt(squares / (15 * len(expected) + 4)), rel=1e-6
        )
        assert int(found["all/nonfinite"]) == 0


def test_host_floats_are_read_as_jax_reads_them_on_every_route() -> None:
    """A float64 beyond float32's range is Inf (without x64), for the RMS and for `nonfinite`,
    beside other values that send the eager call to its second route."""
    tree = {"params": {"a": np.array([1e39, 1.0]), "b": 1e-30, "c": np.float16(2.0)}}
    found = metrics(tree)
    assert int(found["all/nonfinite"]) == int(found["a/nonfinite"]) == 1
    assert float(found["a/params_rms"]) == np.inf and float(found["c/params_rms"]) == 2.0
    assert float(found["b/params_rms"]) == pytest.approx(1e-30, rel=1e-6, abs=0)


def test_arrays_closed_over_by_a_jitted_function_are_rescaled_too() -> None:
    tree = {"params": {"a": jnp.array([1e20, 3.0]), "b": jnp.array([1e-25, 0.0])}}
    eager, traced = metrics(tree), jax.jit(lambda: metrics(tree))()
    for key in ("a/params_rms", "b/params_rms", "all/params_rms"):
        assert float(traced[key]) == pytest.approx(float(eager[key]), rel=1e-6, abs=0), key
    assert float(eager["a/params_rms"]) == pytest.approx(np.sqrt((1e40 + 9) / 2), rel=1e-6)


def test_zero_arrays_need_no_second_read() -> None:
    """A zero array (frozen parameters' updates, moments at `init`) is told from one whose
    squares underflow by the plain sums alone: a jitted step reads it once."""
    from optree_inspect._metrics import _sums_of_squares

    for rows in (jnp.zeros((3, 5)), jnp.array([[0.0, 0.0], [1.0, 2.0]]), jnp.zeros((1, 4), jnp.bfloat16)):
        assert bool(_sums_of_squares([rows], False)[2])
    assert not bool(_sums_of_squares([jnp.full((1, 4), 1e-30)], False)[2])


def test_arrays_on_several_device_sets_and_longdouble_leaves() -> None:
    """Pipeline stages, each on its own devices, and NumPy longdouble leaves (read in float64)."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, optax, optree_inspect as oi
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        devices = np.array(jax.devices())
        stages = [NamedSharding(Mesh(devices[i : i + 4], ("x",)), P("x")) for i in (0, 4)]
        params = {f"s{i}": jax.device_put(jnp.full((8, 4), i + 1.0), s) for i, s in enumerate(stages)}
        params["lone"] = jax.device_put(jnp.full(3, np.nan), jax.devices()[5])
        found = oi.metrics(optax.adam(1e-3).init(params), params=params)
        assert float(found["s1/params_rms"]) == 2.0, found
        assert int(found["all/nonfinite"]) == 3, found
        long = {"w": np.full(3, 2.0, np.longdouble)}
        assert float(oi.metrics(optax.sgd(0.1).init(long), grads=long)["all/grads_rms"]) == 2.0
        print("ok")
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_a_region_of_zero_size_arrays_has_no_rms_keys() -> None:
    """No element, no RMS: the keys are left out (a NaN would read as a fault to a logger)."""
    params = {"w": jnp.ones(3), "z": jnp.zeros((0, 4))}
    state = optax.adam(1e-3).init(params)
    for found in (metrics(state, params=params), jax.jit(lambda s, p: metrics(s, params=p))(state, params)):
        assert sorted(k for k in found if k.startswith("z/")) == ["z/nonfinite"]
        assert float(found["all/params_rms"]) == 1.0


def test_fields_of_one_name_in_several_states_combine() -> None:
    tx = optax.chain(optax.scale_by_adam(), optax.scale_by_adam(b1=0.5))
    state = stepped(tx)[0]
    found = metrics(state, params=PARAMS)
    expected = rms(*jax.tree.leaves(state[0].mu), *jax.tree.leaves(state[1].mu))
    assert float(found["all/mu_rms"]) == pytest.approx(expected, rel=2e-5)


def test_hyperparameters_injected_or_from_the_optimizer() -> None:
    injected = optax.inject_hyperparams(optax.adamw)(learning_rate=optax.linear_schedule(1.0, 0.0, 10))
    state = stepped(injected)[0]
    found = metrics(state, params=PARAMS)
    assert {k: float(v) for k, v in found.items() if "/" not in k} == pytest.approx(
        {k: float(v) for k, v in oi.hyperparams(state).items()}
    )
    plain = optax.adamw(1e-3, weight_decay=0.25)
    with_closures = metrics(stepped(plain)[0], params=PARAMS, optimizer=plain)
    assert float(with_closures["weight_decay"]) == 0.25 and float(with_closures["learning_rate"]) == 1e-3
    traced = jax.jit(lambda s: metrics(s, params=PARAMS))(state)
    assert float(traced["learning_rate"]) == pytest.approx(float(found["learning_rate"]))


def test_eagerly_one_compilation_per_structure() -> None:
    state, updates = stepped(optax.adam(1e-3))
    metrics(state, params=PARAMS, grads=GRADS, updates=updates)
    again = jax.tree.map(lambda x: x + 1, state)
    assert compilations(lambda: metrics(again, params=PARAMS, grads=GRADS, updates=updates)) == 0


def test_the_input_is_not_modified() -> None:
    state = stepped(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3))[0]
    trees = (state, PARAMS, GRADS)
    before = copy.deepcopy(jax.tree.map(np.asarray, trees))
    metrics(state, params=PARAMS, grads=GRADS, regions={"w": "w"})
    after = jax.tree.map(np.asarray, trees)
    assert jax.tree.structure(after) == jax.tree.structure(before)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True)
    )


# Errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regions", "error"),
    [
        ([("w", "w")], oi.InvalidArgumentError),
        ({"all": "w"}, oi.InvalidArgumentError),
        ({"a/b": "w"}, oi.InvalidArgumentError),
        ({"": "w"}, oi.InvalidArgumentError),
        ({1: "w"}, oi.InvalidArgumentError),
        ({"r": 3.5}, oi.InvalidArgumentError),
        ({"r": "nothing_here"}, oi.NoMatchError),
        ({"r": "w[["}, oi.QuerySyntaxError),
    ],
)
def test_bad_regions(regions: Any, error: type[oi.Error]) -> None:
    with pytest.raises(error) as raised:
        metrics(optax.adam(1e-3).init(PARAMS), params=PARAMS, regions=regions)
    assert len(str(raised.value)) < 1000


def test_a_default_region_called_all_must_be_renamed() -> None:
    params = {"all": jnp.ones(2), "head": jnp.ones(2)}
    with pytest.raises(oi.InvalidArgumentError, match="regions="):
        metrics(optax.adam(1e-3).init(params), params=params)
    found = metrics(optax.adam(1e-3).init(params), params=params, regions={"every": "all", "head": "head"})
    assert "every/params_rms" in found


def test_a_donated_state_is_a_deleted_array_error() -> None:
    tx = optax.adam(1e-3)
    state = tx.init(PARAMS)
    jax.jit(lambda s: tx.update(GRADS, s, PARAMS)[1], donate_argnums=0)(state)
    with pytest.raises(oi.DeletedArrayError):
        metrics(state, params=PARAMS)


def test_trees_that_do_not_match_the_moments_by_name() -> None:
    state = optax.adam(1e-3).init(PARAMS)
    with pytest.raises(oi.StructureError, match=r"head\.w"):
        metrics(state, params={"dense1": PARAMS["dense1"]})
    with pytest.raises(oi.StructureError, match="grads="):
        metrics(state, grads={"other": jnp.ones(3)})
    metrics(state, grads={**GRADS, "extra": jnp.ones(2)})  # more than the moments hold is fine


# Properties and first use ----------------------------------------------------------------------


@settings(max_examples=max(5, settings().max_examples // 2))  # each example compiles
@given(st.data())
def test_keys_and_values_agree_on_any_optimizer(data: st.DataObject) -> None:
    params = data.draw(params_trees())
    tx = data.draw(optimizers(params))
    note(repr(tx))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    try:
        state = tx.init(params)
        state = tx.update(grads, state, params)[1]
    except TypeError:
        reject()
    found = metrics(state, params=params, grads=grads)
    assert list(found) == list(jax.jit(lambda s: metrics(s, params=params, grads=grads))(state))
    fields = getattr(type(state), "_fields", ())
    if len(fields) != 1:  # a restored state of one field alone (`{'nu': ...}`) reads as params
        assert list(found) == list(metrics(as_restored(state), params=params, grads=grads))
    assert float(found["all/params_rms"]) == pytest.approx(rms(*jax.tree.leaves(params)), rel=1e-2)
    assert float(found["all/grads_rms"]) == pytest.approx(0.25, rel=1e-2)
    values = [np.asarray(x) for x in jax.tree.leaves((state, params, grads))]
    floats = [x.astype(np.float64) for x in values if jnp.issubdtype(x.dtype, jnp.floating)]
    bad = sum(int((~np.isfinite(x)).sum()) for x in floats)
    assert int(found["all/nonfinite"]) == bad


def test_first_use_under_jit_in_a_fresh_process() -> None:
    """`stats` and `metrics` work when a process's first call of either is inside `jax.jit`: on
    64 and more leaves, a large one, and an nnx optimizer's state."""
    script = textwrap.dedent(
        """
        import sys
        import jax, jax.numpy as jnp, optax
        from flax import nnx
        import optree_inspect as oi
        from optree_inspect import metrics

        def both(tree, **given):
            if sys.argv[1] == "stats":
                found = oi.stats(tree)
                return found, metrics(tree, **given)
            found = metrics(tree, **given)
            return oi.stats(tree), found

        params = {f"layer{i}": {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)} for i in range(40)}
        params["big"] = jnp.ones((512, 512))
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(1e-3))
        stats, found = jax.jit(lambda s, p: both(s, params=p))(tx.init(params), params)
        print(len(stats) > 0, "big/params_rms" in found)

        class Model(nnx.Module):
            def __init__(self, rngs):
                self.a = nnx.Linear(4, 4, rngs=rngs)
        try:
            optimizer = nnx.Optimizer(Model(nnx.Rngs(0)), optax.adam(1e-3), wrt=nnx.Param)
        except TypeError:  # flax before 0.11
            optimizer = nnx.Optimizer(Model(nnx.Rngs(0)), optax.adam(1e-3))
        stats, found = jax.jit(both)(nnx.state(optimizer))
        print(len(stats) > 0, "kernel/mu_rms" in found)
        """
    )
    for first in ("stats", "metrics"):
        result = subprocess.run(
            [sys.executable, "-c", script, first],
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.split() == ["True"] * 4, result.stdout
