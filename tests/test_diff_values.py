"""`diff` on values: exact in every dtype, NaN and Inf named, folded regions, odd leaves, restored
keys, and costs that stay flat (rows found in near-linear work, compilations bounded)."""

from __future__ import annotations

import copy
import fractions
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import warnings
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.tree_util import keystr

import optree_inspect as oi
from helpers import compilations
from optree_inspect import _compare, _engine
from test_restored import _restore_raw

JAX_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32,
              np.float16, ml_dtypes.bfloat16, np.float32, np.complex64]  # fmt: skip
HOST_DTYPES = [*JAX_DTYPES, np.int64, np.uint64, np.float64, np.complex128]


def checked(a: Any, b: Any, **tolerances: float) -> oi.Diff:
    """`oi.diff(a, b)` with warnings as errors, checking that it leaves both trees as they were and
    that every row's query selects the row's node (in `a` for a removed one)."""
    before = [
        copy.deepcopy(np.asarray(x)) if isinstance(x, np.ndarray) else x for x in jax.tree.leaves((a, b))
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = oi.diff(a, b, **tolerances)
    after = jax.tree.leaves((a, b))
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        if isinstance(old, np.ndarray):  # bit for bit: numpy 1.26 and 2.2 find bfloat16 NaNs unequal
            assert (old.dtype, old.shape, old.tobytes()) == (new.dtype, new.shape, new.tobytes())
        else:
            assert old is new
    for row in result:
        tree = a if row.kind == "removed" else b
        assert oi.get(tree, row.query) is oi.get(tree, row.path), row
    return result


def summaries(result: oi.Diff) -> list[str]:
    return [row.summary for row in result]


# Exact values in every dtype, against a Python reference -------------------------------------------------


def _python(x: Any) -> Any:
    """An element as an exact Python number."""
    if isinstance(x, np.complexfloating):
        return complex(x)
    if isinstance(x, np.bool_ | bool):
        return int(x)
    if np.issubdtype(np.asarray(x).dtype, np.integer):
        return int(x)
    return float(np.float64(x)) if np.asarray(x).dtype != np.float64 else float(x)


def _nan(x: Any) -> bool:
    return isinstance(x, float | complex) and x != x


def _finite(x: Any) -> bool:
    return not isinstance(x, float | complex) or (math.isfinite(x.real) and math.isfinite(x.imag))


def _distance(x: Any, y: Any) -> Fraction:
    """|x - y| of finite numbers, exact where both are real, to 40 digits otherwise (no rounding of
    an int to float64 first: int64 2**53+1 and complex 2**53 are 1 apart)."""
    real = Fraction(x.real) - Fraction(y.real)
    imag = Fraction(x.imag) - Fraction(y.imag)
    if imag == 0:
        return abs(real)
    with localcontext() as context:
        context.prec = 40
        parts = [Decimal(part.numerator) / Decimal(part.denominator) for part in (real, imag)]
        return Fraction((parts[0] ** 2 + parts[1] ** 2).sqrt())


def reference(a: np.ndarray, b: np.ndarray) -> tuple[int, int, Fraction | None]:
    """Elements that differ (NaN equal to NaN), how many became NaN, the largest exact difference."""
    changed = became_nan = 0
    largest: Fraction | None = None
    for x, y in zip(map(_python, a.reshape(-1)), map(_python, b.reshape(-1)), strict=True):
        if (_nan(x) and _nan(y)) or (not _nan(x) and not _nan(y) and x == y):
            continue
        changed += 1
        became_nan += _nan(y) and not _nan(x)
        if _finite(x) and _finite(y):
            gap = _distance(x, y)
            largest = gap if largest is None else max(largest, gap)
    return changed, became_nan, largest


def _cast(x: Any, dtype: Any) -> Any:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(x).astype(dtype)


def _values(dtype: Any) -> st.SearchStrategy[Any]:
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return hnp.from_dtype(dtype)
    edges = [0.0, -0.0, 1.0, 2.0**24, 2.0**24 + 2, 1 + 2.0**-40, np.nan, np.inf, -np.inf, 3e38, -3e38]
    finfo = ml_dtypes.finfo(dtype) if dtype == ml_dtypes.bfloat16 else np.finfo(dtype)
    edges += [float(finfo.max), -float(finfo.max), float(finfo.tiny), float(finfo.smallest_subnormal)]
    floats = st.one_of(st.sampled_from(edges), st.floats(allow_nan=True, allow_infinity=True))
    return floats.map(lambda x: _cast(x, dtype)[()])


@st.composite
def pairs(draw: st.DrawFn, dtypes: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    dtype_a = draw(st.sampled_from(dtypes))
    dtype_b = draw(st.one_of(st.just(dtype_a), st.sampled_from(dtypes)))
    size = draw(st.integers(1, 6))
    a = np.array(draw(st.lists(_values(dtype_a), min_size=size, max_size=size)), dtype=dtype_a)
    b = _cast(a, dtype_b)  # many equal elements, and near ones after the cast
    for i in draw(st.lists(st.integers(0, size - 1), max_size=size)):
        b[i] = draw(_values(dtype_b))
    return a, b


def _check_against_reference(a: Any, b: Any) -> None:
    changed, became_nan, largest = reference(np.asarray(a), np.asarray(b))
    rows = [row for row in checked({"x": a}, {"x": b}) if row.kind == "value"]
    if not changed:
        assert rows == []
        return
    [row] = rows
    assert f"{changed:,} of {np.size(a):,} elements differ" in row.summary
    assert (f"{became_nan} became NaN" in row.summary) == bool(became_nan)
    found = re.search(r"max \|diff\| (\S+?)(,|$)", row.summary)
    assert (found is None) == (largest is None), row.summary
    if found is not None and largest is not None:
        shown, exact = Fraction(Decimal(found.group(1))), Fraction(largest)
        assert abs(shown - exact) <= Fraction(6, 1000) * exact, (row.summary, largest)


@settings(max_examples=150, deadline=None)
@given(pairs(HOST_DTYPES))
def test_numpy_leaves_compare_exactly_in_every_dtype(pair: tuple[np.ndarray, np.ndarray]) -> None:
    _check_against_reference(*pair)


@settings(max_examples=60, deadline=None)
@given(pairs(JAX_DTYPES))
def test_jax_leaves_compare_exactly_in_every_dtype(pair: tuple[np.ndarray, np.ndarray]) -> None:
    _check_against_reference(jnp.asarray(pair[0]), jnp.asarray(pair[1]))


@settings(max_examples=10, deadline=None)
@given(pairs([np.int32, np.uint32, np.float32, np.float16, np.bool_]))
def test_leaves_compared_on_the_device_compare_exactly(pair: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.MonkeyPatch.context() as patch:  # every jax array on the device, as large ones are
        patch.setattr(_engine, "SMALL", 0)
        patch.setattr(_compare, "_DEVICE_GROUP", 0)
        _check_against_reference(jnp.asarray(pair[0]), jnp.asarray(pair[1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize(
    "case",
    [
        "equal",
        "one ulp at 1",
        "one ulp at the smallest normal",
        "-0 and 0",
        "NaN in both",
        "Inf in both",
        "huge and equal",
        "huge, one differs",
        "NaN in one",
    ],
)
def test_large_float_pairs_equal_or_not_give_the_exact_rows(case: str, dtype: Any) -> None:
    # the device first tests equality by one float reduction, then compares element by element
    info = ml_dtypes.finfo(dtype)
    a = np.linspace(-2, 2, 1 << 12).astype(dtype)
    b = a.copy()
    if case == "one ulp at 1":
        a[5], b[5] = (
            1,
            np.nextafter(np.float32(1), np.float32(2)).astype(dtype)
            if dtype == np.float32
            else (np.asarray(1 + float(info.eps), dtype)),
        )
    if case == "one ulp at the smallest normal":
        a[7] = np.asarray(float(info.smallest_normal), dtype)
        b[7] = np.asarray(float(info.smallest_normal) * (1 + float(info.eps)), dtype)
    if case == "-0 and 0":
        a[9], b[9] = -0.0, 0.0
    if case == "NaN in both":
        a[3] = b[3] = np.nan
    if case == "Inf in both":
        a[3] = b[3] = -np.inf
    if case.startswith("huge"):
        a[:] = b[:] = np.asarray(float(info.max), dtype)
        if case == "huge, one differs":
            b[11] = np.asarray(float(info.max) / 2, dtype)
    if case == "NaN in one":
        b[0] = np.nan
    differ = {"one ulp at 1", "one ulp at the smallest normal", "huge, one differs", "NaN in one"}
    assert (~((a == b) | (np.isnan(a) & np.isnan(b)))).sum() == (case in differ)
    with pytest.MonkeyPatch.context() as patch:  # on the device, as large pairs are
        patch.setattr(_engine, "SMALL", 0)
        patch.setattr(_compare, "_DEVICE_GROUP", 0)
        if case != "one ulp at the smallest normal":
            _check_against_reference(jnp.asarray(a), jnp.asarray(b))
        else:  # the difference is subnormal, which a device may flush to 0: the count is exact
            [row] = oi.diff({"x": jnp.asarray(a)}, {"x": jnp.asarray(b)})
            assert "1 of 4,096 elements differ" in row.summary


def test_large_float_pairs_of_one_shape_tested_in_one_call_give_each_its_own_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as on an accelerator: up to 8 large float pairs of one shape tested for equality in one call
    monkeypatch.setattr(_compare, "_on_cpu", lambda array: False)
    calls = []
    many = _compare._equal_many
    monkeypatch.setattr(_compare, "_equal_many", lambda a, b: calls.append(len(a)) or many(a, b))
    rng = np.random.default_rng(3)
    a = [rng.standard_normal(1 << 16).astype(np.float32) for _ in range(11)]
    b = [x.copy() for x in a]
    b[1][5] += 1
    a[3][0] = b[3][0] = np.nan
    b[8][:] = 0
    b[10][-1] = np.inf
    with pytest.MonkeyPatch.context() as patch:  # every pair on the device
        patch.setattr(_compare, "_DEVICE_GROUP", 0)
        for x, y in zip(a, b, strict=True):
            _check_against_reference(jnp.asarray(x), jnp.asarray(y))
        calls.clear()
        found = oi.diff(
            {f"x{i:02}": jnp.asarray(x) for i, x in enumerate(a)},
            {f"x{i:02}": jnp.asarray(y) for i, y in enumerate(b)},
        )
    assert set(calls) == {2, 8}  # 8 + 2 (+ 1 alone), in each pass over the pairs
    assert [row.query for row in found] == ["x01", "x08", "x10"]


@pytest.mark.parametrize("change", [None, 2.0, np.nan])
def test_large_concrete_pairs_closed_over_by_a_jitted_function_are_compared(change: Any) -> None:
    # a pair found unequal is compared again on the concrete arrays, not in the trace
    a = jnp.ones(1 << 17)
    b = a if change is None else a.at[5].set(change)
    rows: list[str] = []

    def traced(x: jax.Array) -> jax.Array:
        with pytest.MonkeyPatch.context() as patch:  # on the device, as larger pairs are
            patch.setattr(_compare, "_DEVICE_GROUP", 0)
            rows.extend(row.summary for row in oi.diff({"x": a}, {"x": b}))
        return x

    jax.jit(traced)(jnp.zeros(()))
    expected = {None: [], 2.0: ["1 of 131,072 elements differ, max |diff| 1"], np.nan: ["1 became NaN"]}
    assert len(rows) == len(expected[change])
    assert all(text in row for row, text in zip(rows, expected[change], strict=True))


@pytest.mark.parametrize(
    ("a", "b", "text"),
    [
        (jnp.array([2**24], jnp.int32), jnp.array([2**24 + 1], jnp.int32), "max |diff| 1,"),
        (np.array([1.0]), np.array([1 + 2**-40]), "max |diff| 9.09e-13"),
        (jnp.array([2**32 - 1], jnp.uint32), jnp.array([2**32 - 2], jnp.uint32), "max |diff| 1,"),
        (jnp.array([0], jnp.uint32), jnp.array([2**32 - 1], jnp.uint32), "max |diff| 4.29e+09"),
        (jnp.array([-(2**31)], jnp.int32), jnp.array([2**31 - 1], jnp.int32), "max |diff| 4.29e+09"),
        (np.array([2**63 - 1]), np.array([2**63 - 2]), "max |diff| 1,"),
        (np.array([1e308]), np.array([-1e308]), "max |diff| 2e+308"),
        (jnp.array([3e38], jnp.float32), jnp.array([-3e38], jnp.float32), "max |diff| 6e+38"),
        (np.array([2**53 + 1], np.int64), np.array([2.0**53]), "max |diff| 1,"),
        (np.array([-1], np.int8), np.array([255], np.uint8), "max |diff| 256"),
    ],
)
@pytest.mark.parametrize("where", ["host", "device"])
def test_differences_beyond_float32_are_rows_with_their_size(
    a: Any, b: Any, text: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "device":
        if not (isinstance(a, jax.Array) and isinstance(b, jax.Array)):
            pytest.skip("NumPy leaves are compared on the host")
        monkeypatch.setattr(_engine, "SMALL", 0)
        monkeypatch.setattr(_compare, "_DEVICE_GROUP", 0)
    [row] = [row for row in checked({"x": a}, {"x": b}) if row.kind == "value"]
    assert "1 of 1 elements differ" in row.summary
    assert text in row.summary + ",", row.summary


def test_sixty_four_bit_values_on_the_device_compare_exactly() -> None:
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        import optree_inspect as oi
        from optree_inspect import _compare, _engine
        _engine.SMALL = _compare._DEVICE_GROUP = 0
        cases = [(jnp.array([2**62 + 1]), jnp.array([2**62])), (jnp.array([1.0]), jnp.array([1 + 2**-40])),
                 (jnp.array([2**64 - 1], jnp.uint64), jnp.array([2**64 - 2], jnp.uint64)),
                 (jnp.array([2**53 + 1]), jnp.array([2.0**53])), (jnp.array([1.0]), jnp.array([jnp.nan]))]
        for a, b in cases:
            print([row.summary for row in oi.diff({"x": a}, {"x": b}) if row.kind == "value"])
        print(len(oi.diff({"x": cases[0][0]}, {"x": cases[0][0] + 0})))
        """
    )
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()[-6:]
    prefix = "['x']: value: 1 of 1 elements differ, "
    expected = ["max |diff| 1, max rel 2.17e-19", "max |diff| 9.09e-13, max rel 9.09e-13",
                "max |diff| 1, max rel 5.42e-20", "max |diff| 1, max rel 1.11e-16"]  # fmt: skip
    assert lines[:4] == [str([prefix + text]) for text in expected], lines
    assert lines[4] == "[\"['x']: value: 1 of 1 elements differ, 1 became NaN\"]" and lines[5] == "0"


# NaN and Inf ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [jnp.asarray, np.asarray], ids=["jax", "numpy"])
@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ([1.0, np.nan, 3.0], "1 of 3 elements differ, 1 became NaN"),
        ([1.0, -np.inf, 3.0], "1 of 3 elements differ, 1 became -Inf"),
        ([np.inf, np.nan, 3.0], "2 of 3 elements differ, 1 became NaN, 1 became Inf"),
        ([np.nan, 2.0, 5.0], "2 of 3 elements differ, 1 became NaN, max |diff| 2, max rel 0.4"),
    ],
)
def test_elements_that_became_nan_or_inf_are_named_never_a_zero_difference(
    make: Any, after: list[float], expected: str
) -> None:
    [row] = checked(
        {"x": make(np.array([1.0, 2.0, 3.0], np.float32))}, {"x": make(np.array(after, np.float32))}
    )
    assert row.summary == f"['x']: value: {expected}"
    [back] = checked(
        {"x": make(np.array(after, np.float32))}, {"x": make(np.array([1.0, 2.0, 3.0], np.float32))}
    )
    assert "max |diff| 0" not in back.summary and "were NaN or Inf" in back.summary


def test_nan_in_the_same_place_is_no_difference_in_any_leaf_kind() -> None:
    nan = float("nan")
    trees = [
        {"f": nan, "c": complex(nan, 0), "np": np.float64(nan), "a": np.array([nan, 1.0])},
        {"j": jnp.array([jnp.nan, 1.0]), "c": jnp.array([complex(1, nan)]), "t": (nan, [nan])},
        {f"layer{i}": {"w": nan, "b": jnp.array([jnp.nan])} for i in range(20)},  # folded
    ]
    for tree in trees:
        assert not checked(tree, tree) and not checked(tree, copy.deepcopy(tree))
    assert summaries(checked({"f": nan}, {"f": 1.0})) == ["['f']: value: float = nan -> float = 1.0"]


# Folded regions ------------------------------------------------------------------------------------------


def _region(change: dict[int, Any]) -> dict[str, Any]:
    return {f"layer{i:02d}": change.get(i, jnp.ones(3)) for i in range(20)}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({3: jnp.ones(4)}, ["shape: 1 of 20 leaves, first ['layer03']: f32[3] -> f32[4]"]),
        ({3: np.ones(1, np.float32)}, ["shape: 1 of 20 leaves, first ['layer03']: f32[3] -> f32[1]"]),
        ({3: np.ones(3, np.float32)}, []),
        ({3: jnp.ones(3, jnp.int32), 4: jnp.ones(3, jnp.bfloat16)},
         ["dtype: 2 of 20 leaves, first ['layer03']: f32[3] -> i32[3]"]),
        ({3: jnp.full(3, 2, jnp.int32)},
         ["dtype: 1 of 20 leaves, first ['layer03']: f32[3] -> i32[3]",
          "value: 1 of 20 leaves changed, max |diff| 1"]),
        ({3: 1.0}, ["type: 1 of 20 leaves, first ['layer03']: f32[3] -> float = 1.0"]),
        ({1: jnp.array([1.0, jnp.nan, 1.0]), 2: jnp.zeros(3), 3: jnp.ones(5)},
         ["shape: 1 of 20 leaves, first ['layer03']: f32[3] -> f32[5]",
          "value: 2 of 20 leaves changed, 1 element became NaN, max |diff| 1"]),
    ],
)  # fmt: skip
def test_a_folded_region_sees_every_kind_of_change_of_its_leaves(
    changes: dict[int, Any], expected: list[str]
) -> None:
    result = checked(_region({}), _region(changes))
    assert summaries(result) == [f"<root>: {line}" for line in expected]


def test_a_sharding_change_inside_a_folded_region_on_8_devices() -> None:
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import optree_inspect as oi
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        a = {f"l{i:02d}": jax.device_put(jnp.ones((8, 4 + i)) * i, rows) for i in range(20)}
        b = {**a, "l05": jax.device_put(a["l05"], replicated), "l07": a["l07"].at[0, 0].set(jnp.nan)}
        print([row.summary for row in oi.diff({"p": a}, {"p": b})])
        count = []
        jax.monitoring.register_event_duration_secs_listener(
            lambda name, *_, **__: count.append(name == "/jax/core/compile/backend_compile_duration"))
        c = jax.tree.map(lambda x: x + 1, a)
        count.clear()
        print(len(oi.diff(a, c)), sum(count))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = result.stdout.splitlines()[-2:]
    assert first == str([
        "<root>: sharding: 1 of 20 leaves, first ['p']['l05']: @ P('data',) -> @ replicated(8)",
        "<root>: value: 1 of 20 leaves changed, 1 element became NaN",
    ]), first  # fmt: skip
    assert second == "1 0", second  # 20 sharded leaves of 20 shapes: small, compared on the host


# Leaves of other kinds -----------------------------------------------------------------------------------


def test_prng_keys_text_dates_objects_and_empty_leaves() -> None:
    keys = jax.random.split(jax.random.key(0), 4)
    a = {"key": jax.random.key(0), "keys": keys, "text": np.array(["a", "b"]), "bytes": np.array([b"x"]),
         "dates": np.array(["2024-01-01", "NaT"], "datetime64[D]"), "objects": np.array([1, "a"], object),
         "empty": jnp.zeros((0, 3)), "empty_np": np.zeros((3, 0)), "raw": jax.random.PRNGKey(0)}  # fmt: skip
    assert not checked(a, a) and not checked(a, copy.deepcopy(a))
    b = {**a, "key": jax.random.key(1), "keys": keys.at[2].set(jax.random.key(7)),
         "text": np.array(["a", "c"]),
         "dates": np.array(["2024-01-02", "NaT"], "datetime64[D]"), "objects": np.array([1, "b"], object),
         "empty": jnp.ones((0, 3)), "raw": jax.random.key(0)}  # fmt: skip
    rows = {keystr(row.path): (row.kind, row.summary.split(": ", 1)[1]) for row in checked(a, b)}
    assert rows == {
        "['key']": ("value", "value: 1 of 1 keys differ"),
        "['keys']": ("value", "value: 1 of 4 keys differ"),
        "['text']": ("value", "value: 1 of 2 elements differ"),
        "['dates']": ("value", "value: 1 of 2 elements differ"),
        "['objects']": ("value", "value: 1 of 2 elements differ"),
        "['raw']": ("shape", "shape: u32[2] -> key<fry>[]"),
    }
    other = {"key": jax.random.key(0, impl="rbg")}
    assert [row.kind for row in checked({"key": jax.random.key(0)}, other)] == ["dtype"]


def test_a_deleted_array_is_refused_naming_its_path() -> None:
    donated = jnp.ones(3)
    donated.delete()
    for a, b, side in (
        ({"x": {"w": donated}}, {"x": {"w": jnp.ones(3)}}, "a"),
        ({"x": {"w": jnp.ones(3)}}, {"x": {"w": donated}}, "b"),
    ):
        with pytest.raises(oi.DeletedArrayError, match=re.escape(f"['x']['w'] in {side} was deleted")):
            oi.diff(a, b)
    with pytest.raises(oi.DeletedArrayError):
        oi.diff(_region({4: donated}), _region({}))


# Integer keys and their orbax restore --------------------------------------------------------------------


def test_integer_keys_match_their_text_as_orbax_restores_them(tmp_path: pathlib.Path) -> None:
    state = {
        "layers": {i: {"w": jnp.asarray(np.full(2, i, np.float32))} for i in range(3)},
        "count": jnp.int32(3),
    }
    restored = _restore_raw(state, tmp_path)
    assert "0" in restored["layers"]
    assert not checked(state, restored) and not checked(restored, state)
    moved = oi.set(restored, "layers['1'].w", jnp.full(2, 9.0))
    [row] = checked(state, moved)
    assert keystr(row.path) == "['layers']['1']['w']" and row.kind == "value"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({0: 1, 1: 2}, {"0": 1, "1": 2}, set()),
        ({"0": 1}, {0: 3}, {("value", "[0]")}),
        ({0: 1, 1: 2}, {"0": 1, "2": 2}, {("removed", "[1]"), ("added", "['2']")}),
        ({0: {1: 5}}, {"0": {"1": 5}}, set()),
        ({0: 1, 1: 2}, {"0": 1, "1": 2, "2": 3}, {("added", "['2']")}),
        ({1: 1, 2: 2}, {1: 1, 2: 2}, set()),
    ],
)
def test_a_key_matches_its_text_only_where_nothing_else_does(
    a: Any, b: Any, expected: set[tuple[str, str]]
) -> None:
    assert {(row.kind, keystr(row.path)) for row in checked(a, b)} == expected


def test_a_dict_with_both_an_integer_and_its_text_is_refused_as_jax_refuses_it() -> None:
    with pytest.raises(oi.TreeError):
        oi.diff({0: 1, "0": 2}, {0: 1, "0": 2})


# Costs ---------------------------------------------------------------------------------------------------


def _calls(function: Any) -> int:
    """How many Python and C functions `function()` calls: a count of work, not of time."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        count += 1

    sys.setprofile(profile)
    try:
        function()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize(
    "make",
    [
        lambda n: ({}, {f"k{i}": i for i in range(n)}),
        lambda n: ({f"a{i}": i for i in range(n)}, {f"b{i}": i for i in range(n)}),
        lambda n: ({f"k{i}": [i] for i in range(n)}, {f"k{i}": (i,) for i in range(n)}),
    ],
    ids=["added", "removed-and-added", "types"],
)
def test_finding_the_node_of_each_row_costs_near_linear_work(make: Any) -> None:
    oi.diff(*make(10))
    small, large = (_calls(lambda n=n: oi.diff(*make(n))) for n in (500, 2000))  # type: ignore[misc]
    assert large < 4.6 * small, (small, large)  # quadratic work would be 16x


@pytest.mark.parametrize("shapes", [20, 200])
def test_distinct_shapes_cost_no_compilation(shapes: int) -> None:
    params = {f"p{i}": np.ones((i + 1, 3), np.float32) for i in range(shapes)}
    state = lambda x: (optax.ScaleByAdamState(np.int32(x), *[jax.tree.map(lambda p: p * x, params)] * 2),)  # noqa: E731
    before, after = jax.device_put(state(1)), jax.device_put(state(2))  # no compilation
    assert compilations(lambda: oi.diff(before, after)) == 0
    assert compilations(lambda: oi.diff(before, after, rtol=1e-3)) == 0
    assert [row.query for row in oi.diff(before, after)] == ["count", "mu", "nu"]


def test_large_leaves_compile_once_per_shape_that_holds_enough_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_engine, "SMALL", 8)
    monkeypatch.setattr(_compare, "_DEVICE_GROUP", 64)
    distinct = {f"d{i}": jnp.ones(8 + i) for i in range(30)}  # each below 64 elements: on the host
    shared = {f"s{i}": jnp.ones((4, 5)) for i in range(6)}  # 120 elements of one shape: one compilation
    a = {**distinct, **shared, "big": jnp.ones(100)}
    b = jax.block_until_ready(jax.tree.map(lambda x: x.at[0].set(2.0), a))
    # each shape: a test of equality (on an accelerator, one per group size: 4 + 2 here), a comparison
    assert compilations(lambda: oi.diff(a, b)) <= 5
    result = checked(a, b)
    assert len(result) == 1 and result.rows[0].summary.startswith(
        "<root>: value: 37 of 37 leaves changed, max |diff| 1"
    )
    assert compilations(lambda: oi.diff(a, b)) == 0


@pytest.mark.parametrize(
    "tolerance",
    [
        np.float32(0.6),
        np.float64(0.6),
        np.int64(1),
        1,
        0.6,
        jnp.finfo(jnp.float32).eps,
        10**400,  # beyond float64: inf
        fractions.Fraction(10**400, 3),
    ],
)
def test_tolerances_may_be_any_real_number_python_or_numpy(tolerance: Any) -> None:
    a, b = {"x": jnp.zeros(2)}, {"x": jnp.full(2, 0.5, jnp.float32)}
    assert len(oi.diff(a, b, atol=tolerance)) == (0 if tolerance >= 0.5 else 1)
    assert len(oi.diff(a, b, rtol=tolerance)) == (0 if tolerance >= 1 else 1)


@pytest.mark.parametrize("tolerance", [np.bool_(True), True, np.float32(-1), float("nan"), "1", None])
def test_tolerances_that_are_no_number_at_least_0_are_refused(tolerance: Any) -> None:
    with pytest.raises(oi.InvalidArgumentError, match="at least 0"):
        oi.diff({"x": jnp.zeros(2)}, {"x": jnp.zeros(2)}, atol=tolerance)


_SPECIAL = [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e-30, 3e38, -3e38, 65504.0, 1 + 2**-10]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(("rtol", "atol"), [(0.0, 0.0), (1e-3, 0.0), (0.0, 1e-2), (1e-2, 1e-2)])
def test_many_small_pairs_compared_stacked_on_the_device_give_the_host_rows(
    dtype: Any, rtol: float, atol: float
) -> None:
    random = np.random.default_rng(7)
    with np.errstate(all="ignore"):
        a = random.choice(_SPECIAL, size=(80, 3, 2)).astype(dtype)
        b = np.where(random.random(a.shape) < 0.5, a, random.choice(_SPECIAL, size=a.shape)).astype(dtype)
    on_device = [_compare.Pair(jnp.asarray(x), jnp.asarray(y), 1, True) for x, y in zip(a, b, strict=True)]
    on_host = [_compare.Pair(x, y, 1, True) for x, y in zip(a, b, strict=True)]
    stacked = _compare.compare_values(on_device, rtol, atol)
    on_the_host = _compare.compare_values(on_host, rtol, atol)
    # the relative difference within a rounding of the host's: a GPU divides float32 to 1 ulp
    assert [found._replace(relative=0) for found in stacked] == [f._replace(relative=0) for f in on_the_host]
    assert [found.relative for found in stacked] == pytest.approx([f.relative for f in on_the_host], rel=2e-7)
    assert any(found.changed for found in stacked) and not all(found.changed for found in stacked)
    assert any(found.nan for found in stacked) and any(found.inf for found in stacked)


_LAYOUTS = {  # (pairs, shape, dtype): each is compared where `_engine.run` puts such pairs
    "host, float32": (3, (3, 2), np.float32),
    "host, int32": (70, (3, 2), np.int32),
    "host, bool": (70, (5,), np.bool_),
    "stacked, float32": (70, (3, 2), np.float32),
    "stacked, bfloat16": (70, (4,), ml_dtypes.bfloat16),
    "on the device, float32": (64, (_engine.SMALL,), np.float32),
    "large, on the host": (2, (_engine.SMALL,), np.float32),
}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
@pytest.mark.parametrize("where", ["first", "last"])
def test_the_equality_verdict_is_the_comparison_s(layout: str, where: str) -> None:
    """`values_equal` (diff's test of a state and its copy) says equal exactly where
    `compare_values` finds no element changed: -0 equals 0, NaN equals NaN in the same place,
    tolerances apply; one element changed in any pair is unequal."""
    count, shape, dtype = _LAYOUTS[layout]
    random = np.random.default_rng(count)
    kind = np.dtype(dtype).kind
    values = random.integers(-3, 4, size=(count, *shape)).astype(dtype)
    if kind == "f" or layout.endswith("bfloat16"):
        values.reshape(count, -1)[:, 0] = np.nan
        values.reshape(count, -1)[:, 1] = -0.0
    others = values.copy()
    if kind == "f" or layout.endswith("bfloat16"):
        others.reshape(count, -1)[:, 1] = 0.0  # -0 in a
    a, copy_b = [jnp.asarray(x) for x in values], [jnp.asarray(x) for x in others]
    pair = 0 if where == "first" else count - 1
    changed_values = others.copy()  # JAX on a CPU may share a NumPy array's memory
    last = changed_values[pair].reshape(-1)
    last[-1] = np.logical_not(last[-1]) if kind == "b" else last[-1] + 1
    changed = [jnp.asarray(x) for x in changed_values]

    def verdict_of_rows(b: list[Any], atol: float) -> bool:
        pairs = [_compare.Pair(x, y, 1, True) for x, y in zip(a, b, strict=True)]
        return all(found.changed == 0 for found in _compare.compare_values(pairs, 0.0, atol))

    assert _compare.values_equal(a, copy_b, 0.0, 0.0) is True
    assert verdict_of_rows(copy_b, 0.0) is True
    assert _compare.values_equal(a, changed, 0.0, 0.0) is False
    assert verdict_of_rows(changed, 0.0) is False
    if kind != "b":  # one unit apart: within an atol of 1
        assert _compare.values_equal(a, changed, 0.0, 1.0) is verdict_of_rows(changed, 1.0) is True


def _moments(layers: int) -> Any:
    def params(value: float) -> Any:
        return {f"layer{i}": {"w": jnp.full((4, 4), value), "b": jnp.full(4, value)} for i in range(layers)}

    return (optax.ScaleByAdamState(jnp.int32(3), params(0.5), params(0.25)), optax.EmptyState())


@pytest.mark.parametrize(
    ("change", "kinds"),
    [
        (lambda s: s, []),
        (lambda s: jax.tree.map(lambda x: x.at[...].set(jnp.nan) if x.ndim else x, s), ["value"] * 2),
        (lambda s: _replace_leaf(s, lambda x: x.at[0, 0].set(0.5 + 2**-20)), ["value"]),
        (lambda s: _replace_leaf(s, lambda x: x.astype(jnp.bfloat16)), ["dtype"]),
        (lambda s: _replace_leaf(s, lambda x: x.astype(jnp.bfloat16) + 0.1), ["dtype", "value"]),
        (lambda s: _replace_leaf(s, lambda x: x * 1), []),
        (lambda s: _replace_leaf(s, lambda x: x.reshape(2, 8)), ["shape"]),
        (lambda s: _replace_leaf(s, lambda x: x * 0.0), ["value"]),
    ],
    ids=["equal", "nan", "one element", "dtype", "dtype and value", "equal new array", "shape", "zeros"],
)
def test_trees_of_one_structure_give_every_difference_and_none_else(change: Any, kinds: list[str]) -> None:
    # Equal trees are settled by one comparison pass; anything that differs by the walk by names.
    before = _moments(100)
    after = change(jax.tree.map(jnp.copy, before))
    assert sorted(row.kind for row in oi.diff(before, after)) == sorted(kinds)
    assert sorted(row.kind for row in oi.diff(after, before)) == sorted(kinds)
    assert not oi.diff(after, jax.tree.map(jnp.copy, after))


def _replace_leaf(state: Any, new: Any) -> Any:
    mu = dict(state[0].mu)
    mu["layer57"] = {**mu["layer57"], "w": new(mu["layer57"]["w"])}
    return (state[0]._replace(mu=mu), *state[1:])


def test_trees_of_one_structure_with_weak_types_placements_keys_and_tolerances() -> None:
    state = {"lr": jnp.asarray(0.1), "w": [jnp.full(3, 1.0) for _ in range(100)], "key": jax.random.key(0)}
    strong = {**state, "lr": jnp.asarray(0.1, jnp.float32)}  # weak_type False: a dtype row
    assert [row.kind for row in oi.diff(state, strong)] == ["dtype"]
    other_key = {**state, "key": jax.random.key(1)}
    assert [row.kind for row in oi.diff(state, other_key)] == ["value"]
    near = {**state, "w": [w + 1e-6 for w in state["w"]]}
    assert len(oi.diff(state, near)) == 1
    assert not oi.diff(state, near, atol=1e-5)
    donated = jax.tree.map(jnp.copy, state)
    donated["w"][3].delete()
    with pytest.raises(oi.DeletedArrayError, match=re.escape("['w'][3]")):
        oi.diff(state, donated)


def test_many_small_float_pairs_of_one_shape_are_compared_by_one_program() -> None:
    a = [jnp.full((5, 7), float(i), jnp.float16) for i in range(200)]
    b = [x.at[0, 0].add(1.0) if i % 3 == 0 else x + 0 for i, x in enumerate(a)]
    found: list[Any] = []
    # stacked, 256 pairs a call (and, once a process, a constant JAX converts while tracing it)
    assert 1 <= compilations(lambda: found.append(oi.diff(a, b))) <= 2
    assert [row.summary for row in found[0]] == ["<root>: value: 67 of 200 leaves changed, max |diff| 1"]
    assert compilations(lambda: oi.diff(a, b)) == 0


@pytest.mark.parametrize("where", ["host", "device"])
@pytest.mark.parametrize(("rtol", "atol"), [(1e-3, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_a_value_that_became_inf_is_a_change_whatever_the_tolerances(
    where: str, rtol: float, atol: float
) -> None:
    make = np.asarray if where == "host" else jnp.asarray
    before = {"f": make(np.array([1.0, 2.0, -np.inf], np.float32)), "i": make(np.array([1, 2], np.int32))}
    after = {
        "f": make(np.array([np.inf, 2.0, -np.inf], np.float32)),
        "i": make(np.array([1.0, -np.inf], np.float32)),
    }
    rows = {row.query: row.summary for row in oi.diff(before, after, rtol=rtol, atol=atol)}
    assert "1 of 3 elements differ, 1 became Inf" in rows["f"]
    assert "1 of 2 elements differ, 1 became -Inf" in rows["i"]


def test_many_small_pairs_on_two_devices_compare_as_on_one() -> None:
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        import optree_inspect as oi
        first, second = jax.devices()[:2]
        a = [jax.device_put(jnp.full((4,), float(i)), first) for i in range(70)]
        b = [jax.device_put(x, second) for x in a]
        b[9] = jax.device_put(b[9].at[0].set(-1.0), second)
        print(sorted({row.kind for row in oi.diff(a, b)}))
        print([row.summary for row in oi.diff(a, b) if row.kind == "value"])
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    kinds, values = result.stdout.splitlines()[-2:]
    assert kinds == "['sharding', 'value']", kinds
    assert values == str(["<root>: value: 1 of 70 leaves changed, max |diff| 10"]), values


@pytest.mark.parametrize("unit", ["s", "ns", "D"])
def test_durations_are_compared_and_summarised_as_dates_are(unit: str) -> None:
    """NumPy counts `timedelta64` as an integer; its NaT is no number (the smallest int64): NaT
    equals NaT, a changed duration is counted, and statistics and checks leave durations out."""
    before = {"t": np.array(["NaT", 5, 7], f"timedelta64[{unit}]")}
    after = {"t": np.array(["NaT", 6, 7], f"timedelta64[{unit}]")}
    assert str(oi.diff(before, before)) == "No differences."
    assert str(oi.diff(before, after)) == "['t']: value: 1 of 3 elements differ"
    assert oi.stats(before) == {} and str(oi.check(before)) == "No findings."
    assert str(oi.describe(before, stats=True)).splitlines()[1].endswith(f"timedelta64[{unit}][3]")


@pytest.mark.parametrize(
    ("a", "b", "atol", "differs", "largest"),
    [
        (np.array([0]), np.array([2**53 + 1]), 2**53, True, "9.01e+15"),
        (np.array([0]), np.array([2**53 + 1]), 2**53 + 2, False, None),
        (np.array([2**60 + 100]), np.array([2.0**60]), 0, True, "100"),
        (np.array([2**60 + 100]), np.array([2.0**60]), 50, True, "100"),
        (np.array([2**60 + 100]), np.array([2.0**60]), 100, False, None),
        (np.array([5], np.uint8), np.array([250], np.uint8), 244, True, "245"),
        (np.array([5], np.uint8), np.array([250], np.uint8), 245, False, None),
        (np.array([3], np.int32), np.array([3.5]), 0.5, False, None),
        (np.zeros(8, np.int32), np.full(8, 2**24 + 1, np.int32), 2**24, True, "1.68e+07"),
        (
            jnp.zeros(1 << 22, jnp.int32),
            jnp.zeros(1 << 22, jnp.int32).at[-1].set(2**24 + 1),
            2**24,
            True,
            "1.68e+07",
        ),
        (
            jnp.zeros(1 << 22, jnp.int32),
            jnp.zeros(1 << 22, jnp.int32).at[0].set(2**24 + 3),
            2**24 + 4,
            False,
            None,
        ),
    ],
)
def test_integer_gaps_meet_the_tolerance_exactly(
    a: Any, b: Any, atol: float, differs: bool, largest: Any
) -> None:
    """An integer gap is compared with the tolerance as an integer (with its floor), on the host
    and on a device alike: a float would round `2**53 + 1` to `2**53`, or `2**24 + 1` to `2**24`
    in float32, and an int64 beside a float64 is compared exactly where the float is whole."""
    text = str(oi.diff({"x": a}, {"x": b}, atol=atol))
    assert ("elements differ" in text) is differs, text
    if largest is not None:
        assert f"max |diff| {largest}," in text, text


@pytest.mark.parametrize("size", [2, 1 << 22])
@pytest.mark.parametrize(("rtol", "differs"), [(0.0, True), (1.5, True), (2.5, False)])
def test_a_difference_beyond_the_float_range_is_measured_and_meets_tolerances(
    size: int, rtol: float, differs: bool
) -> None:
    """float32 `3e38` against `-3e38`: the difference (6e38) overflows float32, and so may
    `rtol * |b|`; both are measured in halves, on the host and on a device."""
    a = jnp.zeros(size, jnp.float32).at[0].set(3e38)
    b = jnp.zeros(size, jnp.float32).at[0].set(-3e38)
    text = str(oi.diff({"x": a}, {"x": b}, rtol=rtol))
    assert ("elements differ, max |diff| 6e+38, max rel 2" in text) is differs, text
