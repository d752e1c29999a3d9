"""`diff`: what changed between two states."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.tree_util import keystr

import optree_inspect as oi
from helpers import PARAMS, layered_params, seed_optimizer, trained
from test_restored import _restore_raw

CONSTANT = optax.chain(
    optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
)


def test_a_state_and_itself_differ_in_nothing_even_with_nan() -> None:
    state = trained(seed_optimizer())
    poisoned = oi.set(state, "mu.head.w", lambda x: x.at[0, 0].set(jnp.nan))
    for tree in (state, poisoned):
        result = oi.diff(tree, tree)
        assert not result and len(result) == 0 and list(result) == []
        assert str(result) == "No differences."
    copy = jax.tree.map(lambda x: x + 0, poisoned)  # equal values, other arrays
    assert not oi.diff(poisoned, copy)


def test_one_step_apart_counters_and_moments_change_hyperparameters_do_not() -> None:
    before, after = trained(CONSTANT, steps=1), trained(CONSTANT, steps=2)
    rows = oi.diff(before, after)
    changed = {row.query: row for row in rows}
    assert {row.kind for row in rows} == {"value"}
    by_path = {keystr(row.path): row for row in rows}
    assert by_path["[1].count"].summary == "[1].count: value: i32[] = 1 -> i32[] = 2"
    assert by_path["[1].inner_state[0].count"].after == "i32[] = 2"
    assert any(q.startswith("mu.") for q in changed) and any(q.startswith("nu.") for q in changed)
    assert not any(q in oi.hyperparams(after) for q in changed)  # no hyperparameter moved
    for row in rows:
        assert oi.get(after, row.query) is oi.get(after, row.path)
        assert row.summary.startswith(f"{keystr(row.path)}: value: ")


def test_a_restore_without_types_differs_only_in_types(tmp_path: pathlib.Path) -> None:
    state = trained(seed_optimizer())
    raw = _restore_raw(state, tmp_path)
    rows = oi.diff(state, raw)
    assert {row.kind for row in rows} == {"type"}
    kinds = {(row.before, row.after) for row in rows}
    assert {("tuple", "list"), ("EmptyState", "None"), ("ScaleByAdamState", "dict")} <= kinds
    assert oi.diff(raw, raw).rows == ()


def test_a_restore_into_a_changed_optimizer_names_what_moved() -> None:
    state = CONSTANT.init(PARAMS)
    changed = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.add_decayed_weights(1e-4),
        optax.inject_hyperparams(optax.adamw)(1e-3),
    ).init(PARAMS)
    rows = oi.diff(state, changed)
    assert [row.kind for row in rows][:1] == ["type"] and rows.rows[0].path == (jax.tree_util.SequenceKey(1),)
    assert {row.kind for row in rows} == {"type", "removed", "added"}
    [added] = [row for row in rows if row.kind == "added"]
    assert keystr(added.path) == "[2]" and added.after.startswith("InjectStatefulHyperparamsState")


def test_a_partial_restore_that_kept_init_moments_is_found() -> None:
    trained_state, fresh = trained(CONSTANT), CONSTANT.init(PARAMS)
    partial = oi.set(trained_state, "ScaleByAdamState.mu", fresh[1].inner_state[0].mu)
    rows = oi.diff(trained_state, partial)
    assert {keystr(row.path) for row in rows} == {
        f"[1].inner_state[0].mu{k}" for k in ("['dense1']['b']", "['dense1']['w']", "['head']['w']")
    }
    assert all(row.kind == "value" and "max |diff|" in row.summary for row in rows)


def test_large_params_shaped_regions_are_one_row() -> None:
    params = layered_params(100)
    before = seed_optimizer().init(params)
    after = trained(seed_optimizer(), params=params, steps=1)
    rows = oi.diff(before, after)
    folded = {row.query: row for row in rows if "leaves changed" in row.summary}
    assert set(folded) == {"mu", "nu"}
    assert folded["mu"].summary.startswith("[1].inner_state[0].mu: value: 200 of 200 leaves changed")
    assert len(rows) < 10 and len(str(rows).splitlines()) == len(rows)


def test_tolerances_shapes_dtypes_and_weak_types() -> None:
    a = {"x": jnp.array([1.0, 2.0]), "y": jnp.zeros(3), "z": jnp.float32(1), "w": jnp.asarray(1.0)}
    b = {"x": jnp.array([1.0, 2.001]), "y": jnp.zeros(4), "z": jnp.float16(1), "w": jnp.float32(1.0)}
    rows = {keystr(row.path): row for row in oi.diff(a, b)}
    assert rows["['x']"].kind == "value" and "1 of 2 elements differ" in rows["['x']"].summary
    assert rows["['y']"].kind == "shape" and (rows["['y']"].before, rows["['y']"].after) == (
        "f32[3]",
        "f32[4]",
    )
    assert rows["['z']"].kind == "dtype"
    assert rows["['w']"].kind == "dtype" and rows["['w']"].before.startswith("weak_f32[]")
    assert "['x']" not in {keystr(r.path) for r in oi.diff(a, b, atol=0.01)}
    assert "['x']" not in {keystr(r.path) for r in oi.diff(a, b, rtol=1e-3)}
    with pytest.raises(oi.InvalidArgumentError):
        oi.diff(a, b, rtol=-1.0)


def test_added_removed_and_non_array_leaves() -> None:
    rows = {keystr(r.path): r for r in oi.diff({"a": 1, "s": "adam", "k": 2}, {"a": 2, "s": "sgd", "n": 3})}
    assert rows["['a']"].summary == "['a']: value: int = 1 -> int = 2"
    assert rows["['s']"].kind == "value" and rows["['k']"].kind == "removed" and rows["['n']"].kind == "added"
    assert rows["['k']"].query == "['k']" or rows["['k']"].query == "k"


def test_abstract_states_compare_structure_shapes_and_dtypes() -> None:
    state = trained(seed_optimizer())
    abstract = jax.eval_shape(lambda: state)
    assert not oi.diff(state, abstract) and not oi.diff(abstract, abstract)
    wider = jax.eval_shape(lambda: seed_optimizer().init({**PARAMS, "extra": jnp.zeros(2)}))
    assert {row.kind for row in oi.diff(abstract, wider)} == {"added"}


def test_a_sharding_change_on_8_devices_is_one_row() -> None:
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, optax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import optree_inspect as oi
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        state = optax.adam(1e-3).init({"w": jnp.ones((16, 4)), "b": jnp.ones(4)})
        a = jax.tree.map(lambda x: jax.device_put(x, rows if x.ndim == 2 else replicated), state)
        target = "[0].nu['w']"
        moved = lambda path, x: jax.device_put(x, replicated) if jax.tree_util.keystr(path) == target else x
        b = jax.tree_util.tree_map_with_path(moved, a)
        print([(r.query, r.kind, r.before, r.after) for r in oi.diff(a, b)])
        print(len(oi.diff(a, jax.tree.map(lambda x: x + 0, a))))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = result.stdout.splitlines()[-2:]
    assert first == "[('nu.w', 'sharding', \"@ P('data',)\", '@ replicated(8)')]", first
    assert second == "0"


@pytest.mark.parametrize("keys", [(0, 1), ("0", "1")], ids=["int keys", "str keys"])
@pytest.mark.parametrize("sequence", [list, tuple])
def test_sequence_items_match_dict_keys_of_their_position(keys: tuple[Any, Any], sequence: type) -> None:
    """`nnx.state` turns optax's tuples into dicts of int keys, and orbax restores those as str."""
    x, y = jnp.zeros(3), jnp.ones(2)
    same = oi.diff(sequence([x, y]), dict(zip(keys, [x, y], strict=True)))
    assert [(row.kind, row.before, row.after) for row in same] == [("type", sequence.__name__, "dict")]
    changed = oi.diff(sequence([x, y]), dict(zip(keys, [x, y + 1], strict=True)))
    assert [(keystr(row.path), row.kind) for row in changed] == [("", "type"), (f"[{keys[1]!r}]", "value")]
    missing = oi.diff(sequence([x, y]), {keys[0]: x})
    assert [(row.kind, keystr(row.path)) for row in missing][1:] == [("removed", "[1]")]
