"""Large leaves' statistics, each element read once on its device: the rows of the masked kernel
that `jit` uses, exact counts of NaN, Inf and zeros, sums that neither overflow nor underflow, no
temporary of the leaf's size, and one compilation per shape and dtype whatever the values."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import optree_inspect as oi
from helpers import compilations
from optree_inspect import _values

LARGE = (1 << 16) + 123  # reduced on its device, in whole rows and a shorter one
DEEP = 3 * (1 << 20) + 5  # three levels of partial results


def detailed_row(leaf: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """The leaf's row by the masked kernel (`_device_rows`, as under `jit`), its scale a divisor."""
    counts, sums = jax.jit(_values._device_rows, static_argnums=1)(leaf, tuple(range(leaf.ndim)))
    return np.asarray(counts, np.int64), _values._with_scale(np, np.asarray(sums, np.float64))


def table_row(leaf: Any) -> tuple[np.ndarray, np.ndarray]:
    table = _values.leaf_table([leaf])
    return table.counts[0], table.sums[0]


def pattern(size: int, dtype: Any, shape: tuple[int, ...] | None = None) -> jax.Array:
    """Small multiples of a power of two, zeros among them: every sum is exact in float32."""
    steps = np.arange(size) % 7 - 3 if size < DEEP else np.arange(size) % 3 - 1
    if dtype == np.bool_:
        values: np.ndarray = steps > 0
    elif np.issubdtype(dtype, np.unsignedinteger):
        values = (steps + 3).astype(dtype)
    elif np.issubdtype(dtype, np.integer):
        values = steps.astype(dtype)
    else:
        values = (steps * 0.25).astype(dtype)
    return jnp.asarray(values.reshape(shape or (size,)))


@pytest.mark.parametrize(
    ("dtype", "size", "shape"),
    [
        (np.float32, LARGE, None),
        (np.float32, 70_000, (700, 100)),
        (np.float32, DEEP, None),
        (ml_dtypes.bfloat16, LARGE, None),
        (np.float16, LARGE, None),
        (np.int8, LARGE, None),
        (np.int32, DEEP, None),
        (np.uint8, LARGE, None),
        (np.bool_, LARGE, None),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_rows_equal_the_masked_kernels_where_every_sum_is_exact(dtype: Any, size: int, shape: Any) -> None:
    leaf = pattern(size, dtype, shape)
    counts, sums = table_row(leaf)
    expected_counts, expected_sums = detailed_row(leaf)
    assert counts.tolist() == expected_counts.tolist()
    assert sums.tolist() == expected_sums.tolist()


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.complex64])
@pytest.mark.parametrize("size", [LARGE, DEEP])
def test_rows_of_random_values_equal_the_masked_kernels_within_rounding(dtype: Any, size: int) -> None:
    rng = np.random.default_rng(size)
    values = rng.standard_normal(size) + 0.5
    if dtype == np.complex64:
        values = values + 1j * rng.standard_normal(size)
    leaf = jnp.asarray(values.astype(dtype))
    counts, sums = table_row(leaf)
    expected_counts, expected_sums = detailed_row(leaf)
    if dtype == np.complex64:  # the table's min and max are of whole magnitudes
        expected_sums[:2] *= 2
    assert counts.tolist() == expected_counts.tolist()
    assert sums[:3].tolist() == expected_sums[:3].tolist()  # min, max, scale
    np.testing.assert_allclose(sums[3:], expected_sums[3:], rtol=2e-6, atol=2e-6 * size)


def reference(values: np.ndarray) -> dict[str, float]:
    """`nan`, `inf`, `min`, `max`, `mean`, `rms` and `zero_fraction` in extended precision."""
    wide = np.abs(values.astype(np.complex128)) if np.iscomplexobj(values) else values.astype(np.float64)
    finite = wide[np.isfinite(wide)].astype(np.longdouble)
    return {
        "nan": float(np.isnan(wide).sum()),
        "inf": float(np.isinf(wide).sum()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "rms": float(np.sqrt((finite * finite).mean())),
        "zero_fraction": float((finite == 0).mean()),
    }


def _values_of(case: str) -> np.ndarray:
    """A large leaf's values: some NaN, Inf and zeros, or magnitudes whose squares leave float32."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal(LARGE) + 0.25
    with np.errstate(over="ignore"):
        if case == "nan, inf and zeros":
            values = base.astype(np.float32)
            values[[5, 900, 65_600]] = np.nan
            values[[6, 65_000]] = np.inf
            values[7] = -np.inf
            values[[8, 9, 10, 4000]] = [0.0, -0.0, 0.0, 0.0]
            return values
        if case == "all NaN but one":
            values = np.full(LARGE, np.nan, np.float32)
            values[1234] = -2.5
            return values
        if case == "near 1e30":  # the squares beyond float32
            return (base * 1e30).astype(np.float32)
        if case == "near float32's max, and an Inf":
            values = (np.abs(base) * 1e38).clip(0, 3.4e38).astype(np.float32)
            values[3] = np.inf
            return values
        if case == "near 1e-30":  # the squares below float32
            return (base * 1e-30).astype(np.float32)
        if case == "bfloat16 beyond 1e19":
            return (base * 1e30).astype(ml_dtypes.bfloat16)
        if case == "complex beyond float32":
            values = np.full(LARGE, 3e38 + 3e38j, np.complex64)
            values[0] = np.nan
            return values
    raise AssertionError(case)


CASES = [
    "nan, inf and zeros",
    "all NaN but one",
    "near 1e30",
    "near float32's max, and an Inf",
    "near 1e-30",
    "bfloat16 beyond 1e19",
    "complex beyond float32",
]


@pytest.mark.parametrize("case", CASES)
def test_nonfinite_and_out_of_range_leaves_give_exact_counts_and_finite_sums(case: str) -> None:
    values = _values_of(case)
    got = {key: float(value) for key, value in oi.stats({"x": jnp.asarray(values)})["x"].items()}
    expected = reference(values)
    assert (got["nan"], got["inf"]) == (expected["nan"], expected["inf"])
    assert got["zero_fraction"] * (LARGE - expected["nan"] - expected["inf"]) == pytest.approx(
        expected["zero_fraction"] * (LARGE - expected["nan"] - expected["inf"]), abs=1e-6
    )
    extremes = (expected["min"], expected["max"])
    assert (got["min"], got["max"]) == pytest.approx(extremes, rel=1e-7 if case.startswith("complex") else 0)
    scale = max(abs(expected["min"]), abs(expected["max"]))
    assert np.isfinite(got["mean"]) and np.isfinite(got["rms"])
    assert abs(got["mean"] - expected["mean"]) <= 1e-6 * scale, (got, expected)
    assert got["rms"] == pytest.approx(expected["rms"], rel=1e-6, abs=0)


def test_zeros_are_counted_exactly_with_negative_zeros() -> None:
    values = np.linspace(-1, 1, LARGE, dtype=np.float32)
    values[::3] = 0.0
    values[1::9] = -0.0
    zeros = int((values == 0).sum())
    counts, _ = table_row(jnp.asarray(values))
    assert counts.tolist() == [0, 0, LARGE, zeros]
    assert float(oi.stats({"x": jnp.asarray(values)})["x"]["zero_fraction"]) == zeros / LARGE


@pytest.mark.parametrize("sign", [1, -1])
def test_subnormals_are_read_as_the_masked_kernel_reads_them(sign: int) -> None:
    values = np.asarray(pattern(LARGE, np.float32)) + 2.0  # all positive
    values[[10, 2000]] = sign * np.float32(1e-40)  # zeros on a device that flushes them (a CPU)
    leaf = jax.device_put(values, jax.devices("cpu")[0])
    counts, sums = table_row(leaf)
    expected_counts, expected_sums = detailed_row(leaf)
    assert counts.tolist() == expected_counts.tolist()
    assert sums.tolist() == expected_sums.tolist()


def test_nonfinite_and_overflowing_leaves_compile_nothing_more() -> None:
    shapes = {"a": (301, 299), "b": (90_001,)}
    finite = {"a": jnp.ones(shapes["a"]), "b": jnp.ones(shapes["b"], jnp.bfloat16)}
    assert compilations(oi.stats, finite) <= 2  # one program a shape and dtype
    poisoned = {"a": finite["a"].at[3, 4].set(jnp.nan) * 1e30, "b": finite["b"].at[7].set(jnp.inf) * 1e30}
    assert compilations(oi.stats, poisoned) == 0
    values = oi.stats(poisoned)
    assert (int(values["a"]["nan"]), int(values["b"]["inf"])) == (1, 1)
    assert float(values["a"]["rms"]) == pytest.approx(1e30, rel=1e-6)


def test_an_xla_without_the_cpu_options_compiles_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = jax.jit(_values._leaf_rows, compiler_options={"xla_cpu_no_such_option": True})
    monkeypatch.setitem(_values._REDUCERS, "cpu", unknown)
    values = _values_of("nan, inf and zeros")
    leaf = jax.device_put(values, jax.devices("cpu")[0])
    got = oi.stats({"x": leaf})["x"]
    assert "cpu" not in _values._REDUCERS
    expected = reference(values)
    assert (float(got["nan"]), float(got["inf"]), float(got["max"])) == (
        expected["nan"],
        expected["inf"],
        expected["max"],
    )
    assert float(got["rms"]) == pytest.approx(expected["rms"], rel=1e-6, abs=0)


MEMORY = """
import jax, jax.numpy as jnp, numpy as np
from optree_inspect import _values

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

size = 1 << 24
finite = jnp.linspace(-1, 1, size, dtype=jnp.float32)
leaves = [finite, finite.at[5].set(jnp.nan), finite * 1e30, jnp.arange(size, dtype=jnp.int32)]
jax.block_until_ready(leaves)
_values.leaf_table(leaves)  # compiled
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak resident memory restarts from the current
before = kib("VmRSS")
table = _values.leaf_table(leaves)
assert table.counts[1, 0] == 1, table.counts
print((kib("VmHWM") - before) * 1024 / (4 * size))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux's peak memory reset")
def test_no_temporary_of_a_leafs_size_on_a_cpu() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) < 0.125  # of one 64 MiB leaf
