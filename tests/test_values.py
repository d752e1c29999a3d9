"""The values behind `check`, `stats` and `describe(stats=True)`, against a NumPy reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import optree_inspect as oi
from helpers import compilations, layered_params, nnx_optimizer

FLOATS = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
INTEGERS = [np.int8, np.int32, np.int64, np.uint8, np.uint32, np.uint64, np.bool_]
COMPLEX = [np.complex64, np.complex128]
ON_DEVICE = {
    np.float16,
    ml_dtypes.bfloat16,
    np.float32,
    np.int8,
    np.int32,
    np.uint8,
    np.uint32,
    np.bool_,
    np.complex64,
}
SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e39, -1e39, 3.4e38, 65504.0, 1e20, 1e-30, 1.7e308, -1.7e308]


def reference(arrays: list[Any], flush: bool = False) -> dict[str, float]:
    """The statistics of the arrays' elements together, in extended precision; with `flush`, as
    a device that flushes float32's subnormal numbers to zero computes them."""
    flat = [np.asarray(a) for a in arrays]
    flat = [np.abs(a.astype(np.complex128)) if np.iscomplexobj(a) else a.astype(np.float64) for a in flat]
    values = np.concatenate([a.ravel() for a in flat]) if flat else np.zeros(0)
    if flush:
        values = np.where(np.abs(values) < np.finfo(np.float32).tiny, 0.0, values)
    finite = values[np.isfinite(values)].astype(np.longdouble)
    result = {"nan": float(np.isnan(values).sum()), "inf": float(np.isinf(values).sum())}
    if finite.size == 0:
        return {**result, **dict.fromkeys(("min", "max", "mean", "rms", "zero_fraction"), np.nan)}
    return {
        **result,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "rms": float(np.sqrt((finite * finite).mean())),
        "zero_fraction": float((finite == 0).mean()),
        "scale": float(np.abs(finite).max()),
    }


def assert_matches(
    values: dict[str, Any], expected: dict[str, float], rtol: float, exact: bool = True
) -> None:
    """Counts exact, min and max too where `exact`; mean and RMS within `rtol` of the largest
    magnitude."""
    got = {key: float(value) for key, value in values.items()}
    assert (got["nan"], got["inf"]) == (expected["nan"], expected["inf"]), (got, expected)
    if np.isnan(expected["min"]):
        assert all(np.isnan(got[k]) for k in ("min", "max", "mean", "rms", "zero_fraction")), got
        return
    extremes = (expected["min"], expected["max"])
    assert (got["min"], got["max"]) == (extremes if exact else pytest.approx(extremes, rel=rtol)), got
    scale = expected["scale"]
    assert abs(got["mean"] - expected["mean"]) <= rtol * scale, (got, expected)
    assert abs(got["rms"] - expected["rms"]) <= rtol * scale, (got, expected)
    assert got["zero_fraction"] == pytest.approx(expected["zero_fraction"], rel=rtol)


@st.composite
def arrays(draw: st.DrawFn, dtypes: list[Any] = FLOATS + INTEGERS + COMPLEX, shape: Any = None) -> np.ndarray:
    """Arrays of every numeric dtype, with NaN, Inf, zeros and values near each dtype's range."""
    dtype = draw(st.sampled_from(dtypes))
    shape = shape or draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=6))
    if dtype in INTEGERS:
        return draw(hnp.arrays(np.dtype(dtype), shape))
    number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL))
    real = draw(hnp.arrays(np.float64, shape, elements=number))
    with np.errstate(all="ignore"):  # beyond the dtype's range: stored as Inf, as a user's cast does
        if dtype in COMPLEX:
            return (real + 1j * draw(hnp.arrays(np.float64, shape, elements=number))).astype(dtype)
        return real.astype(dtype)


def placed(array: np.ndarray, where: str) -> Any:
    """`array` on the host, on the device (small: reduced on the host), or tiled to a large device
    array (reduced on the device)."""
    if where == "numpy" or array.dtype.type not in ON_DEVICE:
        return array
    if where == "large":
        array = np.resize(array, 1 << 16)  # one shape: one compilation per dtype
    return jnp.asarray(array)


@given(st.lists(st.tuples(arrays(), st.sampled_from(["numpy", "device", "large"])), min_size=1, max_size=5))
def test_statistics_equal_a_float64_reference_for_every_dtype_and_range(drawn: list[Any]) -> None:
    leaves = {f"x{i}": placed(array, where) for i, (array, where) in enumerate(drawn)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN and Inf NumPy leaves warn nothing
        values = oi.stats(leaves)
        root = next(iter(oi.describe(leaves, stats=True)))
        report = oi.check(leaves)
    device = {key for key, leaf in leaves.items() if isinstance(leaf, jax.Array) and leaf.size >= 1 << 16}
    for key, leaf in leaves.items():
        complex_on_device = key in device and jnp.iscomplexobj(leaf)  # |z| in float32
        expected = reference([leaf], flush=key in device)
        assert_matches(values[key], expected, 1e-5 if key in device else 1e-12, not complex_on_device)
    assert root.stats is not None
    if not device:  # the leaves together
        assert_matches(root.stats, reference(list(leaves.values())), 1e-12)
    expected = {key for key, leaf in leaves.items() if not np.isfinite(np.abs(np.asarray(leaf))).all()}
    assert {finding.query for finding in report} == expected  # a finite float64 1e39 is no Inf


@settings(max_examples=10)
@given(arrays([np.float16, ml_dtypes.bfloat16, np.float32], (5,)), st.sampled_from([64, 100, 300]))
def test_many_small_leaves_of_one_shape_reduced_together_on_the_device_equal_the_reference(
    array: np.ndarray, count: int
) -> None:
    leaves = {f"x{i:03}": jnp.asarray(np.roll(array, i)) for i in range(count)}  # one group, stacked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = oi.stats(leaves)
    expected = reference([array], flush=True)
    for key in leaves:
        assert_matches(values[key], expected, 1e-5)
    root = next(iter(oi.describe(leaves, stats=True)))
    assert root.stats is not None
    assert_matches(root.stats, reference([array] * count, flush=True), 1e-5)


@settings(max_examples=5)
@given(st.lists(arrays(sorted(ON_DEVICE, key=str), (5,)), min_size=2, max_size=3))
def test_statistics_under_jit_equal_the_reference_in_float32(drawn: list[np.ndarray]) -> None:
    leaves = [jnp.asarray(array) for array in drawn]
    traced = jax.jit(oi.stats)(leaves)
    assert len(traced) == len(leaves)
    for leaf, values in zip(leaves, traced.values(), strict=True):
        assert values["nan"].dtype == jnp.int32 and values["mean"].dtype == jnp.float32
        expected = reference([leaf], flush=True)
        if not np.isnan(expected["min"]):
            expected.update({k: float(np.float32(expected[k])) for k in ("min", "max")})
        assert_matches(values, expected, 1e-5, not jnp.iscomplexobj(leaf))


@pytest.mark.parametrize(
    ("where", "zeros", "nans"),
    [
        ("numpy", (1 << 24) + 1, 2),
        ("device", (1 << 24) + 1, 2),
        ("device", (1 << 24) + 1, 0),  # zeros beyond what a float32 sum counts exactly, no NaN
        ("device", (1 << 24) + 5, 0),  # all zeros
        ("device", (1 << 24) - 1, 0),
        ("jit", 3, (1 << 24) + 1),
    ],
)
def test_counts_are_exact_beyond_float32_integers(where: str, zeros: int, nans: int) -> None:
    size = (1 << 24) + 5  # more than float32 counts exactly
    array = np.ones(size, np.float32)
    array[:zeros] = 0
    array[size - nans :] = np.nan
    leaf = array if where == "numpy" else jnp.asarray(array)
    values = jax.jit(oi.stats)({"x": leaf})["x"] if where == "jit" else oi.stats({"x": leaf})["x"]
    finite = size - nans
    assert int(values["nan"]) == nans
    if where != "jit":  # a float32 fraction there
        assert round(float(values["zero_fraction"]) * finite) == zeros
        assert float(values["mean"]) == (finite - zeros) / finite
    if where != "jit" and nans:
        [finding] = oi.check({"x": leaf})
        assert finding.message == f"{nans:,} NaN in {size:,} elements (f32[{size}])"


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32])
@pytest.mark.parametrize(
    "case",
    [
        "normal",
        "tiny",
        "huge",
        "zeros",
        "nan last",
        "nan first",
        "inf",
        "-inf",
        "all zero",
        "constant",
        "subnormal",
    ],
)
def test_a_large_leaf_takes_a_right_path_for_every_range_and_special_value(case: str, dtype: Any) -> None:
    # each case reaches one way through the device kernel: sums rescaled, summed again, or masked
    rng = np.random.default_rng(0)
    size = 1 << 17
    scale = {"tiny": 1e-6 if dtype == np.float16 else 1e-15, "huge": 1e4 if dtype == np.float16 else 1e25}
    array = (rng.standard_normal(size) * scale.get(case, 1.0)).astype(np.float64)
    if case == "zeros":
        array[::3] = 0
    if case == "all zero":
        array[:] = 0
    if case == "constant":
        array[:] = 0.53
    if case == "subnormal":  # the least element: a float32 subnormal too but for float16
        array = np.abs(array) + 1
        array[::8] = -float(ml_dtypes.finfo(dtype).smallest_subnormal)
    special = {"nan last": (-1, np.nan), "nan first": (0, np.nan), "inf": (7, np.inf), "-inf": (9, -np.inf)}
    if case in special:
        position, value = special[case]
        array[position] = value
    array = array.astype(dtype)
    values = oi.stats({"x": jnp.asarray(array)})["x"]
    assert_matches(values, reference([array], flush=True), 2e-6)
    assert [f.kind for f in oi.check({"x": jnp.asarray(array)})] == (["nonfinite"] if case in special else [])


def test_large_leaves_of_one_shape_reduced_in_one_call_give_each_its_own_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as on an accelerator: up to 8 large leaves of one shape, dtype and placement in one call
    monkeypatch.setattr(oi._values, "_arithmetic", lambda leaf: False)
    calls = []
    many = oi._values._reduce_many
    monkeypatch.setattr(oi._values, "_reduce_many", lambda *a: calls.append(len(a[0])) or many(*a))
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(1 << 16).astype(np.float32) * 10.0**i for i in range(-3, 8)]
    arrays[2][::5] = 0
    arrays[4][7] = np.nan
    arrays[5][9] = -np.inf
    arrays[6][:] = 1e-20  # summed again, with masks
    ints = [rng.integers(-5, 5, 1 << 16).astype(np.int32) for _ in range(3)]
    leaves = {f"x{i:02}": jnp.asarray(array) for i, array in enumerate(arrays + ints)}
    values = oi.stats(leaves)
    for key, array in zip(leaves, arrays + ints, strict=True):
        assert_matches(values[key], reference([array], flush=True), 2e-6)
    assert sorted(calls) == [2, 2, 8]  # 11 floats: 8 + 2 (+ 1 alone); 3 ints: 2 (+ 1 alone)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_a_large_leaf_with_nan_and_inf_has_the_host_s_rms_within_1e_6(dtype: Any) -> None:
    # the masked second pass: its float32 sums of squares as accurate as the first pass's
    values = np.linspace(-3, 3, 512 * 256, dtype=np.float32).reshape(512, 256)
    values[500, 7], values[3, 250] = np.nan, -np.inf
    leaf = jnp.asarray(values).astype(dtype)
    device, host = oi.stats({"x": leaf})["x"], oi.stats({"x": np.asarray(leaf)})["x"]
    assert (int(device["nan"]), int(device["inf"])) == (1, 1)
    assert float(device["rms"]) == pytest.approx(float(host["rms"]), rel=1e-6)
    assert float(device["mean"]) == pytest.approx(float(host["mean"]), abs=1e-6 * float(host["rms"]))


@pytest.mark.parametrize("verb", ["stats", "check"])
@pytest.mark.parametrize("case", ["nan", "tiny", "finite"])
def test_a_large_concrete_leaf_closed_over_by_a_jitted_function_is_reduced(verb: str, case: str) -> None:
    # the kernel's second pass (a NaN, tiny values) runs on the concrete leaf, not in the trace
    values = np.full(1 << 17, 1e-20 if case == "tiny" else 2.0, np.float32)
    if case == "nan":
        values[3] = np.nan
    big = jnp.asarray(values)

    def traced(x: jax.Array) -> Any:
        if verb == "check":
            return x + len(oi.check({"big": big, "x": x}))
        return oi.stats({"big": big, "x": x})["big"]

    result = jax.jit(traced)(jnp.zeros(()))
    if verb == "check":  # a traced state: nothing is checked (docs/health.md), and nothing raises
        assert int(result) == 0
    else:
        assert_matches(result, reference([values], flush=True), 2e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_a_leaf_beyond_int32_counts_is_reduced_in_slices(dtype: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oi._values, "_COUNTED", 10_000)  # a device counts up to 2**31 - 1 at once
    array = np.arange(-40_000, 40_000).reshape(800, 100).astype(dtype)
    if dtype == np.float32:
        array[[3, 500], [4, 7]] = [np.nan, -np.inf]
    leaf = jnp.asarray(array)
    assert len(oi._values._pieces(leaf)) == 8  # of 100 rows each
    assert_matches(oi.stats({"x": leaf})["x"], reference([leaf]), 1e-5)


def _numeric(tree: Any) -> list[Any]:
    """The leaves with numbers: arrays that are not PRNG keys."""
    leaves = [leaf for leaf in jax.tree.leaves(tree) if isinstance(leaf, np.ndarray | jax.Array)]
    return [leaf for leaf in leaves if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)]


def _mixed_block(base: float) -> dict[str, Any]:
    """17 numeric leaves (a folded row) between `base` and `base + 3`, and leaves without numbers."""
    block: dict[str, Any] = {f"p{i:02}": jnp.full(3, base + i % 4) for i in range(17)}
    block.update(
        key=jax.random.key(0),
        name="adam",
        abstract=jax.ShapeDtypeStruct((2,), jnp.float32),
        empty=jnp.zeros((0, 2)),
        host=np.full((2,), base),
    )
    return block


def _mixed_tree() -> dict[str, Any]:
    layer = {"w": jnp.full(2, 7.0), "k": jax.random.key(1), "s": "t", "e": np.zeros(0)}
    return {"a": _mixed_block(5.0), "b": _mixed_block(5.0), "layers": [dict(layer) for _ in range(4)]}


def test_leaves_without_numbers_do_not_enter_a_summary() -> None:
    tree = _mixed_tree()
    rows = {row.label: row for row in oi.describe(tree, stats=True)}
    assert rows["a"].folded and rows["b"].like is not None and rows["[1] ... [3]"].folded
    values = oi.stats(tree)
    for query in ("a", "b"):
        assert_matches(values[query], reference(_numeric(tree[query])), 1e-12)
        assert rows[query].stats == pytest.approx(values[query], nan_ok=True)
        assert "5 .. 8" in rows[query].summary
    layers = [key for key in values if key not in ("a", "b") and not np.isnan(float(values[key]["max"]))]
    assert len(layers) == 4  # the first layer's `w`, and each member of the run
    for query in layers:
        assert (float(values[query]["min"]), float(values[query]["max"])) == (7.0, 7.0)
    assert "all 7" in rows["[1] ... [3]"].summary  # the run row: its members together
    assert_matches(rows[""].stats, reference(_numeric(tree)), 1e-12)
    poisoned = {**tree, "a": {**tree["a"], "p03": jnp.array([np.nan, 1.0, 2.0])}}
    assert str(oi.describe(poisoned, stats=True)).splitlines()[0].endswith("[!! 1 leaf with NaN]")


def _nan_leaf(kind: str) -> Any:
    """A leaf holding exactly one NaN, or no numbers at all."""
    return {
        "device": jnp.array([1.0, jnp.nan, -2.0]),
        "host": np.array([[np.nan, 3.0]]),
        "python": float("nan"),
        "int": jnp.arange(3),  # no NaN
        "empty": jnp.zeros((0, 4)),
        "key": jax.random.key(2),
        "text": "name",
    }[kind]


LEAVES = st.sampled_from(["device", "host", "python", "int", "empty", "key", "text"]).map(_nan_leaf)
TREES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from([f"k{i:02}" for i in range(40)]), inner, min_size=1, max_size=40),
        st.builds(lambda child, count: [child] * count, inner, st.integers(1, 7)),  # runs of one structure
    ),
    max_leaves=300,
)


def _nan_total(tree: Any) -> int:
    """The NaN elements of the leaves that hold numbers."""
    numbers = _numeric(tree) + [leaf for leaf in jax.tree.leaves(tree) if isinstance(leaf, float)]
    return sum(int(np.isnan(np.abs(np.asarray(leaf))).sum()) for leaf in numbers)


@settings(max_examples=15)
@given(TREES)
def test_every_leaf_is_in_exactly_one_entry(tree: Any) -> None:
    values = oi.stats(tree)
    total = _nan_total(tree)
    assert sum(int(entry["nan"]) for entry in values.values()) == total
    for query in values:
        oi.get(tree, query)  # each key selects one node
    rows = list(oi.describe(tree, stats=True))
    assert sum(int(row.stats["nan"]) for row in rows[1:] or rows if row.stats is not None) == total


@pytest.mark.parametrize("tree", ["wide", "deep", "optax", "nnx"])
def test_entries_cover_hidden_children_and_cut_levels_once(tree: str) -> None:
    leaf = _nan_leaf("device")
    trees = {
        "wide": {f"k{i:02}": {"w": leaf, "b": leaf} if i % 3 else leaf for i in range(40)},  # "... more"
        "deep": {f"k{i}": {f"j{j}": {"w": leaf, "v": {"x": leaf}} for j in range(6)} for i in range(30)},
        "optax": optax.adam(1e-3).init({f"w{i:02}": leaf for i in range(30)}),
        "nnx": nnx_optimizer().opt_state,
    }
    state = trees[tree]
    if tree == "nnx":
        state = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state)
    values = oi.stats(state)
    assert sum(int(entry["nan"]) for entry in values.values()) == _nan_total(state)
    rows = list(oi.describe(state, stats=True))
    assert sum(int(row.stats["nan"]) for row in rows[1:] if row.stats is not None) == _nan_total(state)
    if tree == "wide":
        assert any("more children" in row.summary for row in rows) and "k39" in values
    if tree == "nnx":  # a Variable's row stands for its value
        assert {"inner_state.count", "mu.bias", "mu.kernel", "b1"} <= set(values)


def test_zero_size_leaves_have_no_elements_and_crash_nothing() -> None:
    tree = {
        "e": jnp.zeros((0, 3)),
        "h": np.zeros(0),
        "w": jnp.ones(2),
        "folded": {f"p{i:02}": jnp.zeros((0,)) for i in range(17)},
    }
    assert not oi.check(tree)
    values = oi.stats(tree)
    assert int(values["e"]["nan"]) == 0 and np.isnan(float(values["e"]["max"]))
    assert np.isnan(float(values["folded"]["min"])) and float(values["w"]["max"]) == 1.0
    assert "f32[0,3]" in str(oi.describe(tree, stats=True))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_python_number_leaves_are_checked(value: float) -> None:
    [finding] = oi.check({"lr": value, "w": jnp.ones(2)})
    what = "NaN" if value != value else "Inf"
    assert finding.query == "lr" and finding.message == f"1 {what} in 1 element (float)"
    assert not oi.check({"big": 10**400, "x": 1e308})  # a Python int beyond float64 is left out


def _donated(where: str) -> tuple[Any, str]:
    """A state with one deleted (donated) array, and the query of that array."""
    layers = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    if where == "run":
        state: Any = {"layers": [jax.tree.map(jnp.array, layers) for _ in range(6)]}
        query = "layers[3].w"
    else:
        state = optax.adam(1e-3).init(layered_params(20))
        query = {"fold": "mu.layer7.w", "like": "nu.layer7.w"}[where]
    oi.get(state, query).delete()
    return state, query


@pytest.mark.parametrize("where", ["fold", "like", "run"])
def test_deleted_arrays_are_named_and_left_out_of_values(where: str) -> None:
    state, query = _donated(where)
    text = str(oi.describe(state))
    line = next(line for line in text.splitlines()[1:] if "deleted" in line)
    named = re.findall(r"1 deleted \((.+)\)", line)
    assert named and [m.path for m in oi.find(state, named[0])] == [m.path for m in oi.find(state, query)]
    assert f"1 deleted ({named[0]})" in text.splitlines()[0]  # the root totals them too
    assert "1 deleted" in str(oi.describe(state, stats=True))
    assert not oi.check(state)
    leaves = [leaf for leaf in jax.tree.leaves(state) if not leaf.is_deleted()]
    rows = list(oi.describe(state, stats=True))
    assert_matches(rows[0].stats, reference(leaves), 1e-12)
    assert sum(1 for _ in oi.stats(state)) >= 1


@pytest.mark.parametrize("container", ["dict", "list"])
@pytest.mark.parametrize("first", [True, False])
def test_a_deleted_array_hides_no_other_leaf(first: bool, container: str) -> None:
    gone, poisoned = jnp.ones(3), jnp.array([1.0, np.nan])
    gone.delete()
    pair = [gone, poisoned] if first else [poisoned, gone]
    tree: Any = dict(zip("ab", pair, strict=True)) if container == "dict" else pair
    key: Any = jax.tree_util.DictKey("ab"[first]) if container == "dict" else jax.tree_util.SequenceKey(first)
    # a tree of another structure seen last: JAX describes the mismatch with a repr of the leaves
    oi.check({"c": jnp.ones(1)} if container == "dict" else [jnp.ones(1)])
    [finding] = oi.check(tree)
    assert finding.path == (key,)
    assert list(oi.stats(tree)) == ["ab"[first] if container == "dict" else str(int(first))]
    assert "deleted" in str(oi.describe(tree, stats=True))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rounded_hyperparameters_of_vmapped_ensembles(dtype: Any) -> None:
    b2 = jnp.array([0.9, 1.0, 0.99, 0.999, 1.0], dtype)
    init = lambda b2: optax.inject_hyperparams(optax.adam)(1e-3, b2=b2).init({"w": jnp.zeros(2, dtype)})  # noqa: E731
    state = jax.vmap(init)(b2)
    [finding] = [f for f in oi.check(state) if f.kind == "rounded_hyperparameter"]
    wrong = np.flatnonzero(np.asarray(b2) == 1)
    where = ", ".join(f"[{i}]" for i in wrong)
    assert finding.query == "b2" and f"b2 is 1 at {len(wrong)} of 5 members ({where})" in finding.message
    eps = jax.vmap(lambda e: optax.inject_hyperparams(optax.adam)(1e-3, eps=e).init({"w": jnp.zeros(2)}))
    [finding] = oi.check(eps(jnp.array([1e-8, 0.0])))
    assert "eps is 0 at 1 of 2 members ([1])" in finding.message
    assert not oi.check(eps(jnp.array([1e-8, 1e-6])))


def _adam_state(shapes: int) -> Any:
    """An adam state over `shapes` distinct shapes, made without compiling anything."""
    moments = {f"p{i}": jax.device_put(np.full((i + 1, 3), 0.5, np.float32)) for i in range(shapes)}
    count = jax.device_put(np.int32(3))
    return (optax.ScaleByAdamState(count=count, mu=moments, nu=dict(moments)), optax.EmptyState())


@pytest.mark.parametrize("verb", ["check", "stats", "describe"])
def test_compilations_do_not_grow_with_the_number_of_shapes(verb: str) -> None:
    run = {"check": oi.check, "stats": oi.stats, "describe": lambda s: oi.describe(s, stats=True)}[verb]
    counts = []
    for shapes in (4, 32, 256):
        counts.append(compilations(run, _adam_state(shapes)))
    assert counts[-1] <= counts[0] <= 1, counts  # small leaves are reduced on the host


def test_compilations_under_jit_are_the_one_of_the_jitted_function() -> None:
    for shapes in (2, 5):
        assert compilations(jax.jit(oi.stats), _adam_state(shapes)) == 1


SHARDED = """
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flax.training import train_state
import optree_inspect as oi

# the values verbs under jit as the process's first use of the package
start = optax.adam(1e-3).init({"w": jnp.array([1.0, 2.0]), "b": jnp.zeros(70000)})

@jax.jit
def step(state):
    oi.check(state)
    oi.describe(state, stats=True)
    return oi.stats(state)

traced, eager = step(start), oi.stats(start)
assert traced.keys() == eager.keys()
for key in eager:
    for name in eager[key]:
        np.testing.assert_allclose(np.asarray(traced[key][name]), eager[key][name], rtol=1e-6)
print("jit ok")

mesh = Mesh(np.array(jax.devices()), ("data",))
rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
tx = optax.adam(1e-3)

# abstract states carrying shardings
params = {"w": jax.device_put(jnp.ones((16, 4)), rows)}
bad = jax.device_put(tx.init(params), replicated)
sds = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
abstractly = lambda tree: jax.tree.map(sds, tree)
abstract, abstract_params = abstractly(bad), abstractly(params)  # as orbax's metadata gives
print("abstract", sorted(f.query for f in oi.check(abstract, params=abstract_params)))
print("sds", sorted(f.query for f in oi.check(abstract, params=params)))  # one side concrete
good = abstractly(jax.tree.map(lambda x: jax.device_put(x, rows) if x.ndim else x, tx.init(params)))
print("good", len(oi.check(good, params=abstract_params)))

# params that are one array
one = jax.device_put(jnp.ones((16, 4)), rows)
state = jax.device_put(tx.init(one), replicated)
print("one", sorted(f.query for f in oi.check(state, params=one)))
held = train_state.TrainState.create(apply_fn=None, params=one, tx=tx).replace(opt_state=state)
print("held", len(oi.check(held)))

# sharded leaves of many shapes: no compilation per shape
events = []
jax.monitoring.register_event_duration_secs_listener(
    lambda e, d, **k: events.append(e) if e == "/jax/core/compile/backend_compile_duration" else None)
for count in (4, 64):
    moments = {f"p{i}": jax.device_put(np.ones((8 * (i + 1), 2), np.float32), rows) for i in range(count)}
    state = optax.ScaleByAdamState(count=jax.device_put(np.int32(0)), mu=moments, nu=dict(moments))
    before = len(events)
    oi.check(state)
    oi.stats(state)
    print("compilations", count, len(events) - before)
"""


def test_jit_first_and_sharding_checks_of_abstract_states_and_one_array_params() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(SHARDED)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {}
    for line in result.stdout.splitlines():
        name, rest = line.split(" ", 1)
        lines[name if name != "compilations" else line.rsplit(" ", 1)[0]] = rest
    assert lines["jit"] == "ok"
    assert lines["abstract"] == lines["sds"] == "['mu.w', 'nu.w']"
    assert lines["good"] == "0"
    assert lines["one"] == "['mu', 'nu']" and lines["held"] == "2"
    assert lines["compilations 4"].split()[-1] == lines["compilations 64"].split()[-1] == "0"


@pytest.mark.parametrize("where", ["numpy", "small", "large", "jit"])
def test_complex_magnitudes_beyond_their_real_dtype_are_finite(where: str) -> None:
    value = 3e38 + 3e38j  # finite, |z| = 4.24e38 is beyond float32
    array = np.full(1 << 16 if where == "large" else 3, value, np.complex64)
    array[0] = np.nan
    leaf = array if where == "numpy" else jnp.asarray(array)
    values = jax.jit(oi.stats)({"a": leaf})["a"] if where == "jit" else oi.stats({"a": leaf})["a"]
    assert (int(values["nan"]), int(values["inf"])) == (1, 0)
    if where != "jit":  # under jit the numbers are float32, where 4.24e38 is inf
        assert float(values["max"]) == pytest.approx(abs(value), rel=1e-6)
        assert float(values["rms"]) == pytest.approx(abs(value), rel=1e-6)
        assert [f.kind for f in oi.check({"a": leaf})] == ["nonfinite"]  # the NaN alone
        assert "1 NaN in" in str(oi.check({"a": leaf}))


def test_host_values_beyond_float32_under_jit_warn_nothing_and_keep_their_counts() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = jax.jit(lambda x: oi.stats({"a": x, "b": np.array([1e300, np.nan])}))(jnp.ones(2))["b"]
    assert (int(values["nan"]), int(values["inf"])) == (1, 0)


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
def test_float8_leaves_are_read_on_the_device_as_on_the_host(dtype: Any) -> None:
    """JAX promotes float8 to float32 only when asked: large and stacked float8 leaves are summed
    in float32 where they live, as the host sums them, by `stats`, `check`, `diff` and `metrics`,
    and `set` checks a float8 value's range."""
    large = np.linspace(-3, 3, 1 << 17).astype(np.float32)
    large[5] = np.nan
    small = [np.linspace(-1, 1, 8).astype(np.float32) * i for i in range(70)]
    tree = {"large": jnp.asarray(large).astype(dtype)}
    tree |= {f"small{i:02d}": jnp.asarray(x).astype(dtype) for i, x in enumerate(small)}
    on_host = jax.tree.map(np.asarray, tree)
    ours, theirs = oi.stats(tree), oi.stats(on_host)
    for key, row in theirs.items():
        for name, value in row.items():
            assert np.allclose(ours[key][name], value, rtol=1e-6, equal_nan=True), (key, name)
    kind = {jnp.float8_e4m3fn: "float8_e4m3fn", jnp.float8_e5m2: "float8_e5m2"}[dtype]
    assert str(oi.check(tree)) == f"nonfinite: large: 1 NaN in 131,072 elements ({kind}[131072])"
    copy = jax.tree.map(jnp.copy, tree)
    assert not oi.diff(tree, copy)
    changed = dict(copy, small05=copy["small05"].at[3].set(2.0))
    assert [row.query for row in oi.diff(tree, changed)] == [""]
    assert int(oi.metrics(tree)["all/nonfinite"]) == 1
    # `set`'s range check of a float8 value for a float8 leaf of a narrower range
    narrower = {"x": jnp.zeros(3, jnp.float8_e4m3fn)}
    assert oi.set(narrower, "x", jnp.ones(3, jnp.float8_e5m2))["x"].dtype == jnp.float8_e4m3fn
    with pytest.raises(oi.StructureError, match="out of range"):
        oi.set(narrower, "x", jnp.full(3, 1024, jnp.float8_e5m2))


@pytest.mark.parametrize("dtype", [np.longdouble, np.clongdouble])
def test_a_longdouble_leaf_is_read_in_float64_by_every_verb(dtype: Any) -> None:
    """Beyond float64's range a longdouble value is Inf for `stats`, `check` and `describe`
    alike, within it the value itself; no NumPy warning escapes (the suite makes them errors)."""
    if (
        np.dtype(dtype).itemsize
        <= np.dtype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64).itemsize
    ):
        pytest.skip("longdouble is float64 here")
    huge = np.array([np.longdouble("1e400"), 1, 3], dtype)
    found = oi.stats({"x": huge})["x"]
    assert (int(found["inf"]), float(found["min"]), float(found["max"]), float(found["mean"])) == (1, 1, 3, 2)
    assert "x: 1 Inf in 3 elements" in str(oi.check({"x": huge}))
    assert "[!! 1 Inf; 1 .. 3; rms 2.24]" in str(oi.describe({"x": huge}, stats=True))
    plain = oi.stats({"x": np.array([1.5, 2.5], dtype)})["x"]
    assert float(plain["mean"]) == 2.0 and int(plain["inf"]) == 0


@pytest.mark.parametrize("largest", [2.0**-126, 2.0**-125 * 1.5, 2.0**-124, 1e-30, 3e38])
def test_stats_under_jit_of_values_near_the_float32_ends(largest: float) -> None:
    """Under `jit` the mean and RMS of values whose largest magnitude is a small normal float32
    are theirs (no divisor below float32's smallest normal, which a CPU flushes to zero)."""
    tree = {"w": jnp.array([largest, largest], jnp.float32)}  # a mean float32 holds
    traced = jax.jit(oi.stats)(tree)["w"]
    eager = oi.stats(tree)["w"]
    for key in ("min", "max", "mean", "rms"):
        assert float(traced[key]) == pytest.approx(float(eager[key]), rel=1e-6, abs=0), key
    assert float(traced["mean"]) > 0


def test_stats_under_jit_with_x64_are_read_in_float64() -> None:
    """With `jax_enable_x64` a traced row is float64: an int32's or int64's min and max, and a
    complex64 magnitude beyond float32, are exact or finite as eagerly."""
    script = textwrap.dedent(
        """
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp, optree_inspect as oi
        tree = {"i32": jnp.array([2**31 - 1, 5], jnp.int32), "i64": jnp.array([2**40 + 1, 3], jnp.int64),
                "c64": jnp.full(4, 3e38 + 3e38j, jnp.complex64)}
        eager, traced = oi.stats(tree), jax.jit(oi.stats)(tree)
        assert float(traced["i32"]["max"]) == 2**31 - 1 and float(traced["i64"]["max"]) == 2**40 + 1, traced
        assert abs(float(traced["c64"]["max"]) / float(eager["c64"]["max"]) - 1) < 1e-6, traced
        print("ok")
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
