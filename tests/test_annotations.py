"""The jaxtyping annotations say what is true: the device kernels, checked by jaxtyping with
beartype, accept the dtypes and shapes the engine gives them and return what they promise, a
wrong input fails the check, and `stats` returns what its annotation says, eagerly and under jit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import beartype
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError, jaxtyped

import optree_inspect as oi
from helpers import seed_optimizer, trained
from optree_inspect import _compare, _values


def checked(function: Any) -> Callable[..., Any]:
    """`function` (its Python body, not its jitted wrapper) with its annotations checked."""
    return jaxtyped(typechecker=beartype.beartype)(getattr(function, "__wrapped__", function))


ARRAYS = [
    jnp.arange(12.0).reshape(3, 4),
    jnp.asarray([1.0, jnp.nan, jnp.inf], jnp.bfloat16),
    jnp.arange(5, dtype=jnp.int8),
    jnp.asarray([True, False]),
    jnp.asarray(2.5),
    jnp.asarray([1 + 2j, 3j], jnp.complex64),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_the_statistics_kernels_hold_their_annotations(array: jax.Array) -> None:
    counts, sums, _, verdict = checked(_values._reduce_one)(array)
    assert verdict.shape == ()
    assert counts.shape == (4,) and sums.shape == (5,)
    counts, sums = checked(_values._reduce_stack)(array, array, array)
    assert counts.shape == (3, 4) and sums.shape == (3, 5)
    if jnp.issubdtype(array.dtype, jnp.floating):
        counts, sums, _ = checked(_values._finite_rows)(array)
        assert counts.shape == (4,) and sums.shape == (5,)


@pytest.mark.parametrize("array", ARRAYS[:4], ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_the_comparison_kernel_holds_its_annotation(array: jax.Array) -> None:
    counts, *_ = checked(_compare._device_compare)(array, array, 0.0, 0.0, False, 1)
    assert counts.ndim == 2 and counts.shape[1] == 6


def test_a_wrong_input_fails_the_check() -> None:
    with pytest.raises(TypeCheckError):
        checked(_values._finite_rows)(jnp.arange(3))  # an int array where the kernel takes floats


def test_stats_returns_what_its_annotation_says() -> None:
    state = trained(seed_optimizer())
    eager = checked(oi.stats)(state)
    assert all(isinstance(value, np.number) for entry in eager.values() for value in entry.values())
    traced = jax.jit(checked(oi.stats))(state)
    assert all(isinstance(value, jax.Array) for entry in traced.values() for value in entry.values())
    assert jax.tree.structure(traced) == jax.tree.structure(eager)
