"""What is wrong in a state: `check`, `stats` and `describe(stats=True)`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.tree_util import keystr

import optree_inspect as oi
from helpers import PARAMS, layered_params, nnx_optimizer, seed_optimizer, skip_unless_a_pytree, trained


def _poisoned(state: Any, nan_at: str, inf_at: str) -> Any:
    state = oi.set(state, nan_at, lambda x: x.at[(0,) * x.ndim].set(jnp.nan))
    return oi.set(state, inf_at, lambda x: x.at[(0,) * x.ndim].set(jnp.inf))


class Trainer(eqx.Module):
    params: dict[str, Any]
    opt_state: Any


def _holders() -> dict[str, tuple[Any, str, str]]:
    """States users hold, each with the queries of a `mu` leaf and a `nu` leaf."""
    seed = trained(seed_optimizer())
    nnx_state = nnx_optimizer()
    return {
        "seed": (seed, "ScaleByAdamState.mu.dense1.w", "ScaleByAdamState.nu.head.w"),
        "train_state": (
            train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=seed_optimizer()),
            "ScaleByAdamState.mu.dense1.w",
            "ScaleByAdamState.nu.head.w",
        ),
        "eqx": (Trainer(PARAMS, seed), "ScaleByAdamState.mu.dense1.b", "ScaleByAdamState.nu.dense1.b"),
        "nnx": (nnx_state, "ScaleByAdamState.mu.kernel", "ScaleByAdamState.nu.bias"),
    }


@pytest.mark.parametrize("holder", ["seed", "train_state", "eqx", "nnx"])
def test_planted_nan_and_inf_are_found_with_their_paths(holder: str) -> None:
    state, nan_at, inf_at = _holders()[holder]
    skip_unless_a_pytree(state)
    assert not oi.check(state)  # healthy
    poisoned = _poisoned(state, nan_at, inf_at)
    report = oi.check(poisoned)
    assert bool(report) and len(report) == 3
    assert [f.kind for f in report] == ["nonfinite_origin", "nonfinite", "nonfinite"]
    origin = report.findings[0]
    assert origin.path == report.findings[1].path and origin.message.startswith("2 of ")
    assert "moment leaves non-finite" in origin.message and "pass grads=" in origin.message
    by_message = {f.message.split(" in ")[0]: f for f in report.findings[1:]}
    nan_finding, inf_finding = by_message["1 NaN"], by_message["1 Inf"]
    for finding, query in ((nan_finding, nan_at), (inf_finding, inf_at)):
        [expected] = [m for m in oi.find(poisoned, query) if jax.tree_util.all_leaves([m.value])] or [
            oi.find(poisoned, query)[0]
        ]
        assert finding.path[: len(expected.path)] == expected.path
        assert oi.get(poisoned, finding.query) is oi.get(poisoned, finding.path)
    text = str(oi.describe(poisoned, stats=True))
    assert text.splitlines()[0].endswith("[!! 1 leaf with NaN, 1 leaf with Inf]"), text
    assert sum("!! 1 NaN" in line for line in text.splitlines()) == 1
    assert sum("!! 1 Inf" in line for line in text.splitlines()) == 1
    assert [line for line in str(report).splitlines()] == [
        f"{f.kind}: {f.query}: {f.message}" for f in report
    ]


_PLACES = {  # (leaves, shape): where `_engine.run` computes such leaves
    "host": (4, (5, 2)),
    "stacked": (70, (4,)),
    "on the device": (4, (1 << 16,)),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
@pytest.mark.parametrize("place", list(_PLACES))
def test_check_finds_exactly_the_leaves_with_nan_or_inf(place: str, dtype: Any) -> None:
    """`check` first proves leaves finite by one reduction each (a finite sum holds no NaN or
    Inf), then counts the rest: its findings are those of NumPy's counts, wherever the leaves
    are computed; a leaf of finite values whose sum overflows is no finding."""
    count, shape = _PLACES[place]
    random = np.random.default_rng(count)
    values = random.standard_normal((count, *shape)).astype(np.float32)
    bad = {1: np.nan, count - 1: np.inf}
    for leaf, special in bad.items():
        values[leaf].reshape(-1)[-1] = special
    values[0].reshape(-1)[0] = -np.inf
    huge = float(jnp.finfo(dtype).max)  # finite, whose sum overflows
    values[2] = huge / 2
    leaves = {f"x{i:03d}": jnp.asarray(value).astype(dtype) for i, value in enumerate(values)}
    leaves["ints"] = jnp.arange(6)
    leaves["scalar"] = float("nan")
    found = {f.query: f.message for f in oi.check(leaves)}
    kind = {jnp.float32: "f32", jnp.bfloat16: "bf16", jnp.float16: "f16", jnp.complex64: "c64"}[dtype]
    elements = int(np.prod(shape))
    expected = {
        "x000": f"1 Inf in {elements:,} elements ({kind}[{','.join(map(str, shape))}])",
        f"x{1:03d}": f"1 NaN in {elements:,} elements ({kind}[{','.join(map(str, shape))}])",
        f"x{count - 1:03d}": f"1 Inf in {elements:,} elements ({kind}[{','.join(map(str, shape))}])",
        "scalar": "1 NaN in 1 element (float)",
    }
    assert found == expected
    candidates = oi._values.nonfinite_candidates(list(leaves.values()))
    assert {0, 1, count - 1, count + 1} <= set(candidates) <= {0, 1, 2, count - 1, count + 1}  # not ints
    overflows = place != "host" and dtype is not jnp.float16  # the host tests each element
    assert (2 in candidates) is overflows


def test_a_healthy_state_has_no_finding_and_says_so() -> None:
    report = oi.check(trained(seed_optimizer()))
    assert not report and len(report) == 0 and list(report) == []
    assert str(report) == "No findings." and repr(report) == "Report(0 findings)"


@pytest.mark.parametrize(
    ("name", "value", "dtype", "found"),
    [
        ("b2", 0.999, jnp.bfloat16, True),  # stored as 1
        ("b2", 0.999, jnp.float32, False),
        ("b1", 1.0, jnp.float32, True),
        ("eps", 1e-8, jnp.float16, True),  # underflows to 0
        ("eps", 1e-8, jnp.bfloat16, False),  # bf16 has float32's range
        ("eps_root", 0.0, jnp.float32, False),  # 0 by default
    ],
)
def test_rounded_hyperparameters(name: str, value: float, dtype: Any, found: bool) -> None:
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, **{name: value})  # b2 0.999: 1 in bf16
    state = tx.init(jax.tree.map(lambda x: x.astype(dtype), PARAMS))
    findings = [f for f in oi.check(state) if f.kind == "rounded_hyperparameter" and f.query == name]
    assert bool(findings) == found, findings
    if found:
        [finding] = findings
        assert finding.query == name and keystr(finding.path) == f".hyperparams['{name}']"
        assert "hyperparam_dtype=jnp.float32" in finding.message


def test_findings_come_most_serious_first() -> None:
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b2=0.999)
    state = tx.init(jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS))
    state = oi.set(state, "mu.head.w", lambda x: x.at[0, 0].set(jnp.nan))
    assert [f.kind for f in oi.check(state)] == ["nonfinite", "rounded_hyperparameter"]  # one: no origin
    state = oi.set(state, "nu.head.w", lambda x: x.at[0, 0].set(jnp.inf))
    kinds = [f.kind for f in oi.check(state)]
    assert kinds == ["nonfinite_origin", "nonfinite", "nonfinite", "rounded_hyperparameter"]


def test_a_report_is_bounded() -> None:
    state = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), seed_optimizer().init(layered_params(100)))
    report = oi.check(state)
    assert len(report) == 407  # where it started, every mu and nu leaf, the 6 float hyperparameters
    assert len(str(report).splitlines()) == 41 and "367 more findings" in str(report)


# Statistics ------------------------------------------------------------------------------------

FINITE = st.floats(-1e6, 1e6, width=32)
VALUES = st.one_of(FINITE, st.sampled_from([0.0, np.nan, np.inf, -np.inf]))


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=VALUES))
def test_statistics_equal_numpy_s(array: np.ndarray) -> None:
    values = oi.stats({"x": jnp.asarray(array)})["x"]
    finite = array[np.isfinite(array)]
    assert int(values["nan"]) == np.isnan(array).sum() and int(values["inf"]) == np.isinf(array).sum()
    if finite.size == 0:
        assert all(np.isnan(float(values[k])) for k in ("min", "max", "mean", "rms", "zero_fraction"))
        return
    assert float(values["min"]) == finite.min() and float(values["max"]) == finite.max()
    np.testing.assert_allclose(float(values["mean"]), finite.astype(np.float64).mean(), rtol=1e-4, atol=1e-2)
    rms = np.sqrt((finite.astype(np.float64) ** 2).mean())
    np.testing.assert_allclose(float(values["rms"]), rms, rtol=1e-4)
    assert float(values["zero_fraction"]) == pytest.approx((finite == 0).mean())


def test_statistics_of_every_kind_of_leaf() -> None:
    tree = {
        "ints": jnp.array([3, -2, 0]),
        "bools": jnp.array([True, False, False, False]),
        "bf16": jnp.array([0.5, 0.0], jnp.bfloat16),
        "complex": jnp.array([3 + 4j]),
        "host": np.array([1.0, np.nan]),
        "python": 2.5,
        "key": jax.random.key(0),
        "name": "adam",
    }
    values = oi.stats(tree)
    assert set(values) == {"ints", "bools", "bf16", "complex", "host", "python"}  # no numbers: left out
    assert (float(values["ints"]["min"]), float(values["ints"]["max"])) == (-2.0, 3.0)
    assert int(values["ints"]["nan"]) == 0 and float(values["bools"]["zero_fraction"]) == 0.75
    assert float(values["complex"]["max"]) == 5.0  # |3+4j|
    assert int(values["host"]["nan"]) == 1 and float(values["python"]["mean"]) == 2.5


def test_stats_inside_jit_equal_stats_outside() -> None:
    state = _poisoned(trained(seed_optimizer()), "mu.dense1.w", "nu.head.w")
    eager = oi.stats(state)
    traced = jax.jit(oi.stats)(state)
    assert eager.keys() == traced.keys()
    for key, values in eager.items():
        for name, value in values.items():  # float32 in the trace, float64 eagerly
            np.testing.assert_allclose(
                np.asarray(traced[key][name]), np.asarray(value), rtol=1e-6, err_msg=key
            )


def test_stats_keys_are_describe_rows_or_the_leaves_of_a_query() -> None:
    state = seed_optimizer().init(layered_params(100))
    values = oi.stats(state)
    rows = {row.query for row in oi.describe(state) if row.stats is None}
    assert {"mu", "nu", "learning_rate", "InjectStatefulHyperparamsState>count"} & set(values) >= {"mu", "nu"}
    assert set(values) <= rows | {r.query for r in oi.describe(state)}
    for key in values:
        oi.get(state, key)  # each key selects one node
    under = oi.stats(state, "mu")
    assert len(under) == 200 and all(oi.get(state, key).ndim >= 1 for key in under)
    with pytest.raises(oi.AmbiguousMatchError):
        oi.stats(state, "w")


def test_describe_with_stats_keeps_shapes_only_where_there_are_no_values() -> None:
    state = trained(seed_optimizer())
    abstract = jax.eval_shape(lambda: state)
    assert str(oi.describe(abstract, stats=True)) == str(oi.describe(abstract))
    assert not oi.check(abstract)

    @jax.jit
    def under_jit(state: Any) -> Any:
        assert str(oi.describe(state, stats=True)) == str(oi.describe(state))
        return state

    under_jit(state)


def test_describe_with_stats_shows_a_moment_that_stays_zero() -> None:
    state = seed_optimizer().init(layered_params(100))
    text = str(oi.describe(state, stats=True))
    assert "mu: dict, 100 keys, 200 leaves, f32, 7.81 KB  [all 0]" in text, text
    rows = {row.query: row for row in oi.describe(state, stats=True)}
    assert rows["mu"].stats is not None and rows["mu"].stats["zero_fraction"] == 1.0


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([1.0, 1.001], "[1 .. 1.001; rms 1]"),
        ([1.0, 1.0000001], "[1 .. 1.00000012; rms 1]"),
        ([2.5, 2.5], "[all 2.5]"),
        ([1e-30, 1.0000001e-30], "[1e-30 .. 1.0000001e-30; rms 1e-30]"),
        ([-0.0, 0.0], "[all 0]"),
    ],
)
def test_describe_says_all_only_of_a_leaf_whose_values_are_one(values: list[float], shown: str) -> None:
    """The range is rounded to 3 digits, or to as many as tell its ends apart: "all" only where
    the minimum and the maximum are one number."""
    text = str(oi.describe({"w": np.asarray(values, np.float32)}, stats=True))
    assert text.endswith(shown), text


# Sharding --------------------------------------------------------------------------------------


def test_moments_less_sharded_than_their_params_are_found() -> None:
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, optax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from flax.training import train_state
        import optree_inspect as oi
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        params = {"w": jax.device_put(jnp.ones((16, 4)), rows), "b": jax.device_put(jnp.ones(4), replicated)}
        tx = optax.adam(1e-3)
        adam = tx.init(params)[0]
        placed = lambda tree: jax.tree.map(lambda m, p: jax.device_put(m, p.sharding), tree, params)
        good = (adam._replace(mu=placed(adam.mu), nu=placed(adam.nu)), optax.EmptyState())
        bad = jax.device_put(tx.init(params), replicated)
        print("good", len(oi.check(good, params=params)), len(oi.check(train_state.TrainState.create(
            apply_fn=None, params=params, tx=tx).replace(opt_state=good))))
        report = oi.check(bad, params=params)
        print("bad", sorted(f.query for f in report), {f.kind for f in report})
        print("ts", len(oi.check(train_state.TrainState.create(apply_fn=None, params=params, tx=tx).replace(
            opt_state=bad))))
        print("message", report.findings[0].message)
        w = np.arange(64.0, dtype=np.float32).reshape(16, 4)
        w[3, 1] = np.nan
        sharded = jax.device_put(jnp.asarray(w), rows)  # reduced where its shards are
        big = jax.device_put(jnp.arange(1024 * 128.0).reshape(1024, 128).at[3, 1].set(jnp.nan), rows)
        values = oi.stats({"w": sharded, "big": big})
        print("sharded", *(float(values[k][s]) for k in ("w", "big") for s in ("nan", "max", "mean")))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["good"] == "0 0"
    assert lines["bad"] == "['mu.w', 'nu.w'] {'replicated_moment'}"
    assert lines["ts"] == "2"
    expected = "64 elements on its fullest device (replicated over 8 devices), 8x its parameter's 8"
    assert expected in lines["message"]
    finite, big = np.delete(np.arange(64.0), 13), np.delete(np.arange(1024 * 128.0), 3 * 128 + 1)
    nan, top, mean, big_nan, big_top, big_mean = map(float, lines["sharded"].split())
    assert (nan, top, big_nan, big_top) == (1, 63, 1, big.max()) and mean == pytest.approx(
        finite.mean(), rel=1e-12
    )
    assert big_mean == pytest.approx(big.mean(), rel=1e-6)  # on the devices, in float32


# Where it started ------------------------------------------------------------------------------


def _nan_step(tx: optax.GradientTransformation) -> tuple[Any, Any, Any, Any]:
    """One step of `tx` with one NaN in the gradient of `l2.b`: params, grads, updates, state."""
    params = {f"l{i}": {"w": jnp.ones((4, 4)), "b": jnp.ones(4)} for i in range(3)}
    grads = jax.tree.map(jnp.ones_like, params)
    grads["l2"]["b"] = grads["l2"]["b"].at[1].set(jnp.nan)
    updates, state = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates), grads, updates, state


def test_a_global_norm_clip_spreads_one_nan_gradient_and_the_origin_names_it() -> None:
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    params, grads, updates, state = _nan_step(tx)
    report = oi.check(state, params=params, grads=grads, updates=updates)
    origin, *rest = report
    assert (origin.kind, origin.tree, origin.query) == ("nonfinite_origin", "grads", "l2.b")
    assert origin.message.startswith("1 of 6 gradient leaves non-finite (`l2.b`); every update, moment")
    assert "global-norm clip" in origin.message
    trees = [f.tree for f in rest]
    assert trees == ["grads"] + ["updates"] * 6 + ["state"] * 12 + ["params"] * 6  # the data flow
    assert str(report).splitlines()[1] == "nonfinite: [grads] l2.b: 1 NaN in 4 elements (f32[4])"


def test_without_a_global_step_only_the_leaf_s_moments_follow() -> None:
    params, grads, _, state = _nan_step(optax.adam(1e-3))
    origin = oi.check(state, params=params, grads=grads).findings[0]
    assert origin.message == (
        "1 of 6 gradient leaves non-finite (`l2.b`); then 2 of 12 moment leaves, 1 of 6 parameter leaves."
    )


def test_a_train_state_takes_grads_and_its_own_params() -> None:
    from flax.training import train_state

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    params, grads, _, state = _nan_step(tx)
    ts = train_state.TrainState.create(apply_fn=None, params=params, tx=tx).replace(opt_state=state)
    report = oi.check(ts, grads=grads)
    assert report.findings[0].query == "l2.b" and report.findings[0].tree == "grads"
    assert "every moment and parameter leaf followed" in report.findings[0].message
    assert [f.tree for f in report][-6:] == ["state"] * 6 and report.findings[-1].query.startswith("params.")


def test_healthy_gradients_put_the_origin_in_the_state() -> None:
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    state = oi.set(optax.adam(1e-3).init(params), "nu.w", jnp.array([1.0, jnp.inf, 1.0]))
    state = oi.set(state, "mu.w", jnp.array([1.0, jnp.nan, 1.0]))
    origin = oi.check(state, grads=jax.tree.map(jnp.ones_like, params)).findings[0]
    assert (origin.tree, origin.query) == ("state", "mu.w")
    assert origin.message == "2 of 4 moment leaves non-finite (`mu.w`, `nu.w`)."
    assert not oi.check(optax.adam(1e-3).init(params), grads=jax.tree.map(jnp.ones_like, params))


def test_a_folded_row_names_its_first_non_finite_leaves() -> None:
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    _, _, _, state = _nan_step(tx)
    description = oi.describe(state, stats=True)
    [like] = [row for row in description if row.kind == "like"]
    assert like.first_nonfinite == ("nu.l0.b", "nu.l0.w", "nu.l1.b", "...")
    assert "[!! 60 NaN (first: nu.l0.b, nu.l0.w, nu.l1.b, ...)]" in str(description)
    assert "!! 60 NaN (first: nu.l0.b, nu.l0.w, nu.l1.b, ...)" in description._repr_html_()
    healthy = oi.describe(tx.init({"w": jnp.ones(3)}), stats=True)
    assert all(row.first_nonfinite == () for row in healthy) and "first:" not in str(healthy)
