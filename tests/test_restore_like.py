"""`restore_like`: each leaf cast exactly as `set` casts a value (checked against `set` and against a
NumPy reference of the rule), leftovers found by path, orbax's `str` keys matched to `int` keys,
and every bad input a documented error with a bounded message that leaves both inputs unchanged.
"""

from __future__ import annotations

import collections
import copy
import fractions
import math
import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import optree_inspect as oi
from helpers import PARAMS, seed_optimizer, trained


def _saved(directory: pathlib.Path, tree: Any) -> pathlib.Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(directory, tree)
        checkpointer.wait_until_finished()
    return directory


# The cast: exactly `set`'s ----------------------------------------------------------------------

SOURCE_DTYPES = [
    np.dtype(name)
    for name in (
        "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    )
]  # fmt: skip
CANDIDATES: list[tuple[Any, Any]] = [
    (True, False), (0, 1), (-1, 5), (127, -128), (255, 0), (70_000, -3), (2**31 - 1, -(2**31)),
    (3_000_000_000, 1), (2**40 + 5, 3), (2**63 - 1, 0), (2**64 - 1, 0), (1.5, -2.5),
    (65_504.0, -65_504.0), (1e6, 0.5), (3e38, 1.0), (1e39, -1.0), (math.nan, math.inf),
    (-math.inf, 2.0), (1 + 2j, -3j), (1e6 + 1e6j, 0), (1e39j, 1), (complex(math.nan, 1), 0),
]  # fmt: skip
ON_DEVICE = ("bool", "int8", "uint16", "int32", "uint32", "float16", "bfloat16", "float32", "complex64")
LEAVES: dict[str, Callable[[], Any]] = {
    **{f"jax-{d}": lambda d=d: jnp.zeros(2, d) for d in ON_DEVICE},
    **{f"numpy-{d}": lambda d=d: np.zeros(2, d) for d in ("bool", "int8", "int64", "uint64")},
    **{f"numpy-{d}": lambda d=d: np.zeros(2, d) for d in ("float16", "float64", "complex128")},
    "numpy-scalar-float32": lambda: np.float32(0),
    "numpy-scalar-int64": lambda: np.int64(0),
    "python-bool": lambda: False,
    "python-int": lambda: 0,
    "python-float": lambda: 0.0,
    "python-complex": lambda: 0j,
    "weak-float32": lambda: jnp.asarray(0.0),
    "weak-int32": lambda: jnp.asarray(0),
    "weak-float32-vector": lambda: jax.lax.broadcast(jnp.asarray(0.0), (2,)),
    "abstract-int32": lambda: jax.ShapeDtypeStruct((2,), jnp.int32),
    "abstract-float16": lambda: jax.ShapeDtypeStruct((2,), jnp.float16),
    "abstract-weak-float32": lambda: jax.eval_shape(lambda: 0.0),
}


def _representable(values: tuple[Any, Any], dtype: np.dtype) -> bool:
    if dtype == np.bool_:
        return all(type(v) is bool for v in values)
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return all(type(v) is int and info.min <= v <= info.max for v in values)
    if any(isinstance(v, complex) for v in values) and not jnp.issubdtype(dtype, jnp.complexfloating):
        return False
    largest = float(jnp.finfo(dtype).max)
    parts = [p for v in values for p in (complex(v).real, complex(v).imag)]
    return all(not math.isfinite(p) or abs(p) <= largest for p in parts)


def _raw_values(shape: tuple[int, ...]) -> list[Any]:
    """Each candidate pair in each dtype that holds it, as NumPy arrays (and, for 0-d, NumPy
    scalars), and as JAX arrays where the dtype is one JAX keeps without x64."""
    values: list[Any] = []
    for dtype in SOURCE_DTYPES:
        for pair in CANDIDATES:
            if not _representable(pair, dtype):
                continue
            if jnp.issubdtype(dtype, jnp.inexact):  # ml_dtypes < 0.7 refuses Python ints beyond int64
                pair = tuple(v if isinstance(v, complex) else float(v) for v in pair)
            array = np.array(pair, dtype)
            forms = [array[0], array[0][()]] if shape == () else [array]
            if dtype.name in ("bool", "uint32", "int32", "bfloat16", "float32", "complex64"):
                forms.append(jnp.asarray(forms[0]))  # cast on the device: one compilation a dtype pair
            values.extend(forms)
    return values


def _rank(dtype: Any) -> int:
    for rank, kind in enumerate((jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating)):
        if jnp.issubdtype(dtype, kind):
            return rank
    raise AssertionError(dtype)


def _reference(value: Any, leaf: Any) -> Any:
    """The rule, in NumPy: same kind or a kind below, and every finite value within the range of
    the leaf's dtype (a Python int has none); the value as `astype` makes it; else the error class."""
    array = np.asarray(value)
    python = type(leaf) in (bool, int, float, complex)
    target = np.dtype(type(leaf)) if python else np.dtype(leaf.dtype)
    if _rank(array.dtype) > _rank(target):
        return oi.LeafTypeError
    if type(leaf) is not int:
        if jnp.issubdtype(target, jnp.integer):
            info = jnp.iinfo(target)
            if any(not info.min <= int(v) <= info.max for v in array.ravel()):
                return oi.StructureError
        elif target != np.bool_:
            largest = float(jnp.finfo(target).max)
            parts = np.concatenate([np.real(array).ravel(), np.imag(array).ravel()]).astype(np.float64)
            if np.abs(parts[np.isfinite(parts)], dtype=np.float64).max(initial=0.0) > largest:
                return oi.StructureError
    if python:
        return type(leaf)(array.item())
    return _rounded_once(array, target)


def _rounded_once(array: np.ndarray, target: np.dtype) -> np.ndarray:
    """`array.astype(target)`, each value the nearest (ties to even) in an ml_dtypes float type,
    exactly: ml_dtypes before 0.7 rounds 64-bit values through float32, twice."""
    cast = array.astype(target)
    if target.char in np.typecodes["AllFloat"] or not jnp.issubdtype(target, jnp.floating):
        return cast
    flat = cast.reshape(-1)
    for i, (value, got) in enumerate(zip(array.reshape(-1).tolist(), flat, strict=True)):
        if math.isfinite(value) and math.isfinite(float(got)):
            steps = [np.nextafter(got, target.type(bound)) for bound in (math.inf, -math.inf)]
            flat[i] = min([got, *steps], key=lambda c, v=value: _distance_then_odd(c, v))
    return flat.reshape(cast.shape)


def _distance_then_odd(candidate: Any, value: float) -> tuple[fractions.Fraction, int]:
    odd = int(candidate.view(f"u{candidate.dtype.itemsize}")) % 2
    return abs(fractions.Fraction(float(candidate)) - fractions.Fraction(value)), odd


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except oi.Error as error:
        assert len(str(error)) <= 4000
        return type(error)


def _concrete(leaf: Any) -> Any:
    """What `set` is compared with for an abstract leaf: a concrete leaf of its dtype, weak type, shape."""
    if not isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    zeros = jnp.zeros(leaf.shape, leaf.dtype)
    return zeros if not leaf.weak_type else jax.lax.broadcast(jnp.asarray(0.0), leaf.shape)


def _assert_same_as_set_and_reference(value: Any, leaf: Any) -> None:
    got = _outcome(lambda: oi.restore_like({"x": value}, {"x": leaf})["x"])
    expected = _outcome(lambda: oi.set({"x": _concrete(leaf)}, "x", value)["x"])
    reference = _reference(value, leaf)
    where = f"{value!r} ({type(value).__name__}) into {leaf!r}"
    if isinstance(expected, type):
        assert got is expected and reference is expected, where
        return
    assert not isinstance(got, type) and not isinstance(reference, type), where
    assert type(got) is type(expected), where
    if isinstance(expected, jax.Array):
        assert jax.typeof(got) == jax.typeof(expected), where  # dtype, shape and weak type
    assert np.asarray(got).dtype == np.asarray(reference).dtype, where
    assert np.array_equal(np.asarray(got), np.asarray(reference), equal_nan=True), where


@pytest.mark.parametrize("leaf_kind", sorted(LEAVES))
def test_each_value_is_cast_as_set_casts_it(leaf_kind: str) -> None:
    """Every source dtype, with values that fit, wrap (`2**40+5` into int32, uint32 `3e9` into
    int32), overflow (`1e39` into float32, `1e6` into float16), change kind (a float into an int
    leaf, a Python int leaf included) or carry an imaginary part, against every kind of leaf."""
    leaf = LEAVES[leaf_kind]()
    for value in _raw_values(np.shape(leaf)):
        _assert_same_as_set_and_reference(value, leaf)


BF16_DRAWN = float(np.float32(3e38))  # within bfloat16's range, exact in float32


@given(
    leaf_kind=st.sampled_from(sorted(LEAVES)),
    dtype=st.sampled_from(SOURCE_DTYPES),
    data=st.data(),
)
def test_random_values_are_cast_as_set_casts_them(
    leaf_kind: str, dtype: np.dtype, data: st.DataObject
) -> None:
    leaf = LEAVES[leaf_kind]()
    elements = None if dtype != np.dtype("bfloat16") else st.floats(-BF16_DRAWN, BF16_DRAWN, width=32)
    drawn = np.float32 if elements is not None else dtype
    array = data.draw(hnp.arrays(drawn, np.shape(leaf), elements=elements))
    _assert_same_as_set_and_reference(array.astype(dtype), leaf)


def _nearest_bfloat16(value: int) -> float:
    """The bfloat16 nearest a Python int (ties to even), in exact integer arithmetic."""
    dropped = abs(value).bit_length() - 8  # bfloat16 keeps 8 significant bits
    kept, rest = divmod(abs(value), 2**dropped)
    kept += rest > 2 ** (dropped - 1) or (rest == 2 ** (dropped - 1) and kept % 2 == 1)
    return math.copysign(float(kept << dropped), value)


BIG_INTS = [
    sign * (2**exponent + offset)
    for sign in (1, -1)
    for exponent in (53, 63, 64, 100)
    for tie in (2 ** (exponent - 8),)  # half of bfloat16's spacing above 2**exponent
    for offset in (0, 1, tie - 1, tie, tie + 1, 3 * tie - 1, 3 * tie)
]  # fmt: skip
NEAR_TIES = [
    sign * (1 + 2**-8 * odd + 2**-40 * step) for sign in (1, -1) for odd in (1, 3) for step in (-1, 0, 1)
]


@pytest.mark.parametrize(
    "leaf",
    [jnp.zeros((), jnp.bfloat16), np.zeros((), jnp.bfloat16), np.zeros((), jnp.bfloat16)[()]],
    ids=["jax", "numpy", "numpy-scalar"],
)
def test_64_bit_values_round_once_to_the_nearest_bfloat16(leaf: Any) -> None:
    """Python ints and floats, int64, uint64 and float64 values near and at bfloat16 ties, and ints
    no int64 holds (ml_dtypes before 0.7 rounds these through float32, twice, or refuses them)."""
    values: list[tuple[Any, float]] = []
    for number in BIG_INTS:
        expected = _nearest_bfloat16(number)
        values.append((number, expected))
        values.extend((kind(number), expected) for kind in (np.int64, np.uint64) if _fits(number, kind))
    for number in NEAR_TIES:
        expected = _nearest_bfloat16(int(fractions.Fraction(number) * 2**60)) / 2**60
        values.extend([(number, expected), (np.float64(number), expected), (np.array(number), expected)])
    for value, expected in values:
        for got in (
            oi.set({"x": leaf}, "x", value)["x"],
            oi.restore_like({"x": value}, {"x": leaf})["x"],
            oi.restore_like({"x": value}, jax.eval_shape(lambda: {"x": jnp.asarray(leaf)}))["x"],
        ):
            assert got.dtype == jnp.bfloat16 and float(got) == expected, repr(value)


def _fits(number: int, kind: type) -> bool:
    return bool(np.iinfo(kind).min <= number <= np.iinfo(kind).max)


def test_the_named_wraps_and_overflows_are_refused() -> None:
    cases = [
        (np.int64(2**40 + 5), jnp.zeros((), jnp.int32), oi.StructureError),
        (np.uint32(3_000_000_000), jnp.zeros((), jnp.int32), oi.StructureError),
        (np.float64(1e39), jnp.zeros((), jnp.float32), oi.StructureError),
        (np.float32(1e6), jnp.zeros((), jnp.float16), oi.StructureError),
        (np.float32(2.5), 3, oi.LeafTypeError),
    ]
    for value, leaf, error in cases:
        with pytest.raises(error, match=r"\['count'\]"):
            oi.restore_like({"count": value}, {"count": leaf})
    back = oi.restore_like({"mu": np.array([1 + 2j, -3j])}, {"mu": jnp.zeros(2, jnp.complex64)})["mu"]
    assert back.dtype == jnp.complex64 and np.array_equal(np.imag(back), [2, -3])


def test_a_resumed_jitted_step_does_not_retrace(tmp_path: pathlib.Path) -> None:
    like = {
        "lr": jnp.asarray(1e-3),  # weakly typed, as a Python float makes it
        "scale": jax.lax.broadcast(jnp.asarray(2.0), (3,)),  # weakly typed, not a scalar
        "count": jnp.asarray(0, jnp.int32),
        "mu": jnp.zeros(3),
    }
    assert [jax.typeof(x).weak_type for x in jax.tree.leaves(like)] == [False, True, False, True]
    step = jax.jit(lambda state: jax.tree.map(lambda x: x + 1, state))
    step(like)
    raws = [
        {"lr": np.float64(0.5), "scale": np.ones(3), "count": np.int64(4), "mu": np.ones(3)},
        {"lr": jnp.float32(0.5), "scale": jnp.ones(3), "count": jnp.int32(4), "mu": jnp.ones(3)},
        oi.load(_saved(tmp_path / "weak", like), arrays=True),
    ]
    for raw in raws:
        step(oi.restore_like(raw, like))
        step(oi.restore_like(raw, jax.eval_shape(lambda: like)))
    assert step._cache_size() == 1  # type: ignore[attr-defined]


# Leftovers: by path, not by object --------------------------------------------------------------

SHARED = np.ones(2)
LEFTOVERS: dict[str, tuple[Any, Any, str]] = {
    "shared array": ({"a": SHARED, "b": SHARED}, {"a": jnp.zeros(2)}, "['b']"),
    "small ints": ({"a": 1, "b": 1}, {"a": 0}, "['b']"),
    "shared NumPy scalar": ({"a": np.int32(3), "z": np.int32(3)}, {"a": jnp.int32(0)}, "['z']"),
    "nested sharing": (
        {"mu": {"w": SHARED}, "nu": {"w": SHARED}},
        {"mu": {"w": jnp.zeros(2)}},
        "['nu']['w']",
    ),
    "list items": ([SHARED, SHARED], [jnp.zeros(2)], "[1]"),
    "equal strings": ({"a": "adam", "b": "adam"}, {"a": "sgd"}, "['b']"),
    "leaf shared with like's own": ({"a": SHARED, "b": SHARED}, {"a": SHARED}, "['b']"),
}


@pytest.mark.parametrize("name", sorted(LEFTOVERS))
@pytest.mark.parametrize("missing", ["error", "init"])
def test_a_part_only_the_checkpoint_has_is_found_even_when_it_shares_an_object(
    name: str, missing: str
) -> None:
    raw, like, extra = LEFTOVERS[name]
    with pytest.raises(oi.RestoreMismatchError, match=r"\(1 difference\)") as caught:
        oi.restore_like(raw, like, missing=missing)  # type: ignore[arg-type]
    assert str(caught.value).splitlines()[1:] == [f"  {extra}: only in the checkpoint"]


# Integer dict keys: orbax saves {0: ...} as {'0': ...} ----------------------------------------


@pytest.mark.parametrize(
    "like",
    [
        {0: jnp.zeros(2), 1: jnp.ones(2)},
        {"layers": {0: {"w": jnp.zeros(2)}, 10: {"w": jnp.ones(2)}, 2: {"w": jnp.ones(2)}}},
        [{-1: jnp.zeros(2)}, {np.int64(3): jnp.ones(2)}],
    ],
    ids=["flat", "layers", "negative-and-numpy"],
)
def test_int_keys_match_the_str_keys_orbax_restores(like: Any, tmp_path: pathlib.Path) -> None:
    def spelled(node: Any) -> Any:
        if isinstance(node, dict):
            return {str(k): spelled(v) for k, v in node.items()}
        if isinstance(node, list):
            return [spelled(v) for v in node]
        return np.asarray(node) + 1

    back = oi.restore_like(spelled(like), like)
    assert jax.tree.structure(back) == jax.tree.structure(like)
    assert all(
        np.array_equal(b, np.asarray(x) + 1)
        for b, x in zip(jax.tree.leaves(back), jax.tree.leaves(like), strict=True)
    )
    state = optax.adam(1e-3).init(like)  # a real orbax round trip
    assert not oi.diff(state, oi.restore_like(oi.load(_saved(tmp_path / "ints", state), arrays=True), state))


def test_a_str_key_matches_only_itself_where_like_has_it_too() -> None:
    like = collections.OrderedDict([(0, jnp.zeros(1)), ("0", jnp.ones(1))])  # JAX keeps both, in order
    back, kept = oi.restore_like({"0": np.full(1, 5.0)}, like, missing="init")
    assert float(back["0"][0]) == 5.0 and [m.path for m in kept] == [(jax.tree_util.DictKey(0),)]
    both = collections.OrderedDict([("0", np.full(1, 5.0)), (0, np.full(1, 7.0))])
    assert float(oi.restore_like(both, like)[0][0]) == 7.0
    with pytest.raises(oi.RestoreMismatchError, match=r"\['01'\]: only in the checkpoint"):
        oi.restore_like({"01": np.ones(1)}, {1: jnp.zeros(1)})
    with pytest.raises(oi.RestoreMismatchError, match=r"\['0'\]: only in like"):
        oi.restore_like({0: np.ones(1)}, {"0": jnp.zeros(1)})  # only a str key of the checkpoint is read so


# nnx states ------------------------------------------------------------------------------------


class _Layers(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        layers = getattr(nnx, "List", list)  # nnx.List from flax 0.12
        self.layers = layers([nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)])


@pytest.fixture(scope="module")
def nnx_forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An nnx optimizer's state (its layer list keyed 0, 1) and its `as_pure` form, live and saved."""
    optimizer = nnx.Optimizer(_Layers(nnx.Rngs(0)), optax.adam(1e-3), wrt=nnx.Param)
    root = tmp_path_factory.mktemp("nnx")
    forms = {"state": nnx.state(optimizer)}
    if hasattr(nnx, "as_pure"):  # from flax 0.12
        forms["pure"] = nnx.as_pure(forms["state"])
    for name in list(forms):
        forms[f"saved {name}"] = oi.load(_saved(root / name, forms[name]), arrays=True)
    return forms


@pytest.mark.parametrize("like_name", ["state", "pure", "abstract state"])
@pytest.mark.parametrize("raw_name", ["state", "pure", "saved state", "saved pure"])
def test_nnx_states_restore_from_every_saved_form(
    nnx_forms: dict[str, Any], like_name: str, raw_name: str
) -> None:
    """Each Variable of a saved state comes back as {'value': ...}: it restores into arrays too."""
    if "pure" in like_name + raw_name and "pure" not in nnx_forms:
        pytest.skip("nnx.as_pure is new in flax 0.12")
    like = nnx_forms[like_name.removeprefix("abstract ")]
    like = jax.eval_shape(lambda: like) if like_name.startswith("abstract") else like
    raw = nnx_forms[raw_name]
    back = oi.restore_like(raw, like)
    assert jax.tree.structure(back) == jax.tree.structure(like)
    if not like_name.startswith("abstract"):
        assert not oi.diff(like, back)


# Bad inputs: a documented error, bounded, inputs unchanged ---------------------------------------

BAD: dict[str, tuple[Callable[[], tuple[Any, Any]], type[oi.Error], str]] = {
    "a dict for a leaf": (
        lambda: ({"w": {"a": np.ones(2)}}, {"w": jnp.zeros(2)}),
        oi.RestoreMismatchError,
        r"\['w'\]: a dict in the checkpoint, a leaf in like",
    ),
    "a list for a leaf": (
        lambda: ({"w": [np.ones(2)]}, {"w": jnp.zeros(2)}),
        oi.RestoreMismatchError,
        "a list in the checkpoint",
    ),
    "a leaf for a subtree": (
        lambda: ({"mu": np.ones(2)}, {"mu": {"w": jnp.zeros(2)}}),
        oi.RestoreMismatchError,
        r"\['mu'\]: a leaf in the checkpoint, a dict in like",
    ),
    "a leaf for a state": (
        lambda: ([np.ones(2), None], optax.adam(1e-3).init({"w": jnp.zeros(2)})),
        oi.RestoreMismatchError,
        r"\[0\]: a leaf in the checkpoint, a ScaleByAdamState in like",
    ),
    "None for an array": (
        lambda: ({"w": None}, {"w": jnp.zeros(2)}),
        oi.RestoreMismatchError,
        r"\['w'\]: only in like",
    ),
    "text for an array": (
        lambda: ({"w": "0.5"}, {"w": jnp.zeros(2)}),
        oi.LeafTypeError,
        r"\['w'\] is not a number",
    ),
    "NumPy text for an array": (
        lambda: ({"w": np.array(["a", "b"])}, {"w": jnp.zeros(2)}),
        oi.LeafTypeError,
        r"\['w'\]",
    ),
    "an array for a string leaf": (
        lambda: ({"name": np.ones(2)}, {"name": "adam"}),
        oi.LeafTypeError,
        r"\['name'\]",
    ),
    "another shape": (
        lambda: ({"w": np.ones(3)}, {"w": jnp.zeros(2)}),
        oi.RestoreMismatchError,
        r"\['w'\]: shape \(3,\) in the checkpoint, \(2,\) in like",
    ),
    "a scalar for a vector": (
        lambda: ({"w": np.float32(1)}, {"w": jnp.zeros(2)}),
        oi.RestoreMismatchError,
        r"shape \(\) in the checkpoint",
    ),
    "abstract leaves": (
        lambda: ({"w": jax.ShapeDtypeStruct((2,), jnp.float32)}, {"w": jnp.zeros(2)}),
        oi.LeafTypeError,
        r"arrays=True",
    ),
    "abstract leaves of a kind above": (
        lambda: (
            {"w": jax.ShapeDtypeStruct((2,), jnp.float32)},
            jax.eval_shape(lambda: {"w": jnp.zeros(2, int)}),
        ),
        oi.LeafTypeError,
        r"float32 value in the int32 leaf",
    ),
    "key data for a typed key": (
        lambda: ({"key": np.zeros((), np.uint32)}, {"key": jax.random.key(0)}),
        oi.LeafTypeError,
        r"\['key'\]",
    ),
    "key data for an abstract typed key": (
        lambda: ({"key": np.zeros((), np.uint32)}, jax.eval_shape(lambda: {"key": jax.random.key(0)})),
        oi.LeafTypeError,
        r"\['key'\] is a key<fry> key",
    ),
    "a dict no JAX function flattens": (
        lambda: ({0: np.ones(2), "a": np.ones(2)}, {"a": jnp.zeros(2)}),
        oi.TreeError,
        "sortable",
    ),
    "20,000 differences": (
        lambda: ({f"extra{i}": np.ones(1) for i in range(20_000)}, {f"w{i}": jnp.zeros(1) for i in range(3)}),
        oi.RestoreMismatchError,
        r"20,003 differences",
    ),
    "a 1 MB key": (
        lambda: ({"k" * 1_000_000: np.ones(1)}, {"w": {"k" * 1_000_000: jnp.zeros(1)}}),
        oi.RestoreMismatchError,
        "2 differences",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_input_is_a_documented_bounded_error_and_changes_nothing(name: str) -> None:
    make, error, fragment = BAD[name]
    raw, like = make()
    before = copy.deepcopy((raw, like))
    with pytest.raises(error, match=fragment) as caught:
        oi.restore_like(raw, like)
    assert len(str(caught.value)) <= 4000
    _assert_equal_trees(before, (raw, like))


def _assert_equal_trees(a: Any, b: Any) -> None:
    """Equal containers (read without JAX: some of these trees JAX cannot flatten) and leaves."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_equal_trees(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal_trees(x, y)
    elif isinstance(a, jax.ShapeDtypeStruct) or a is None:
        assert a == b
    elif isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.extended):
        assert a.dtype == b.dtype and np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    else:
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)


def test_a_load_without_arrays_is_refused_for_a_live_like_and_checked_against_an_abstract_one(
    tmp_path: pathlib.Path,
) -> None:
    state = trained(seed_optimizer())
    loaded = oi.load(_saved(tmp_path / "seed", state))  # the arrays as ShapeDtypeStructs
    with pytest.raises(
        oi.LeafTypeError, match=r"abstract leaves .*: \d+, the first at .* load\(path, arrays=True\)"
    ):
        oi.restore_like(loaded, state)
    abstract = jax.eval_shape(lambda: state)
    checked = oi.restore_like(loaded, abstract)
    assert jax.tree.structure(checked) == jax.tree.structure(abstract)
    arrays = [leaf for leaf in jax.tree.leaves(checked) if np.shape(leaf) != ()]
    assert arrays and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in arrays)
    changed = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)).init(PARAMS)
    with pytest.raises(oi.RestoreMismatchError, match="only in"):
        oi.restore_like(loaded, jax.eval_shape(lambda: changed))


def test_typed_keys_restore_into_concrete_and_abstract_likes() -> None:
    like = {"key": jax.random.key(0), "w": jnp.zeros(2)}
    raw = {"key": jax.random.key(7), "w": np.ones(2)}
    for target in (like, jax.eval_shape(lambda: like)):
        back = oi.restore_like(raw, target)
        assert np.array_equal(jax.random.key_data(back["key"]), jax.random.key_data(raw["key"]))


def test_the_result_shares_no_buffer_with_the_inputs() -> None:
    raw = {"a": np.ones(2), "b": np.ones(2, np.float32)}
    like = {"a": np.zeros(2), "b": np.zeros(2, np.float32)}
    back = oi.restore_like(raw, like)
    back["a"][0] = back["b"][0] = 9.0
    assert raw["a"][0] == raw["b"][0] == 1.0 and like["a"][0] == like["b"][0] == 0.0


# missing="init" --------------------------------------------------------------------------------


def test_init_keeps_exactly_what_only_like_has() -> None:
    like = {
        "a": jnp.zeros(2),
        "b": {"x": jnp.ones(2), "y": 3},
        "c": [jnp.zeros(1), jnp.ones(1)],
        "d": jnp.ones(1),
    }
    raw = {"a": np.full(2, 5.0), "b": None, "c": [np.full(1, 7.0)], "d": {}}
    back, kept = oi.restore_like(raw, like, missing="init")
    paths = [jax.tree_util.keystr(m.path) for m in kept]
    assert paths == ["['b']['x']", "['b']['y']", "['c'][1]", "['d']"]
    assert all(
        m.value is value for m, value in zip(kept, [like["b"]["x"], 3, like["c"][1], like["d"]], strict=True)
    )
    assert float(back["a"][0]) == 5.0 and float(back["c"][0][0]) == 7.0 and back["b"]["y"] == 3
    with pytest.raises(oi.RestoreMismatchError, match=r"4 differences"):
        oi.restore_like(raw, like)
