"""describe and hyperparams (docs/reading.md)."""

from __future__ import annotations

import functools
import html.parser
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import IPython.lib.pretty
import jax
import jax.numpy as jnp
import optax
import pytest
from flax.training import train_state
from jax.tree_util import SequenceKey

import optree_inspect as oi
from helpers import LABELS, PARAMS, layered_params, nnx_optimizer, seed_optimizer, trained, wrapped_state
from optree_inspect._leaf import LeafSummary
from optree_inspect._listing import Listing
from optree_inspect._rows import Held, Leaves, Scheduled

GOLDEN = pathlib.Path(__file__).parent / "golden"


@functools.cache
def states() -> dict[str, Any]:
    return {
        "seed_chain": trained(seed_optimizer()),
        "named_chain": wrapped_state("named_chain"),
        "partition": wrapped_state("partition"),
        "multi_steps": wrapped_state("multi_steps"),
        "train_state": train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=seed_optimizer()),
        "sgd": optax.sgd(0.1).init(PARAMS),
        "seed_20k": seed_optimizer().init(layered_params(5000)),
    }


@pytest.mark.parametrize(
    "name", ["seed_chain", "named_chain", "partition", "multi_steps", "train_state", "sgd", "seed_20k"]
)
def test_golden_text(name: str) -> None:
    if name == "named_chain" and type(states()[name]) is dict:
        pytest.skip(f"optax {optax.__version__} keeps named_chain's state in a dict, which jit sorts")
    expected = _same_on_every_version((GOLDEN / f"{name}.txt").read_text())
    assert _same_on_every_version(str(oi.describe(states()[name])) + "\n") == expected
    assert _same_on_every_version(repr(oi.describe(states()[name])) + "\n") == expected


def _same_on_every_version(text: str) -> str:
    """named_chain's state is an OrderedDict from optax 0.2.6, a dict before: compare either."""
    return text.replace("OrderedDict: ", "dict: ", 1) if text.startswith("OrderedDict: ") else text


def test_what_the_seed_state_shows() -> None:
    text = str(oi.describe(trained(seed_optimizer())))
    assert "      learning_rate: f32[] = 0.0001 (scheduled, used at step 1)" in text
    assert "    count: i32[] = 2" in text
    assert "  [1]: InjectStatefulHyperparamsState" in text
    assert "nu: like [1].inner_state[0].mu, 3 leaves, f32, 112 B" in text


def test_a_20000_leaf_state_folds_to_a_screen_and_keeps_hyperparameters() -> None:
    state = seed_optimizer().init(layered_params(5000))
    lines = str(oi.describe(state)).splitlines()
    assert len(lines) < 80
    assert "        mu: dict, 5,000 keys, 10,000 leaves, f32, 391 KB" in lines
    assert any("learning_rate: f32[] = 0 (scheduled, for step 0)" in line for line in lines)
    assert any(line.strip().startswith("count: i32[]") for line in lines)


def test_a_three_layer_mlp_shows_its_params_in_full() -> None:
    params = {f"dense{i}": {"kernel": jnp.zeros((8, 8)), "bias": jnp.zeros(8)} for i in range(3)}
    text = str(oi.describe(optax.adam(1e-3).init(params)))
    for i in range(3):
        assert f"      dense{i}: dict\n        bias: f32[8]\n        kernel: f32[8,8]" in text


def test_wide_nodes_that_cannot_fold_are_capped() -> None:
    tree = tuple(optax.EmptyState() if i % 2 else optax.MaskedNode() for i in range(100))
    lines = str(oi.describe(tree)).splitlines()
    assert lines[-1].strip() == "... 76 more children"
    assert len(lines) == 1 + 24 + 1


def test_runs_of_siblings_of_one_structure_are_one_line() -> None:
    lines = str(oi.describe(tuple(optax.EmptyState() for _ in range(100)))).splitlines()
    assert lines[1:] == ["  [0]: EmptyState", "  [1] ... [99]: 99 more EmptyState"]
    three = str(oi.describe(tuple(optax.EmptyState() for _ in range(3)))).splitlines()
    assert len(three) == 4  # fewer than RUN_MIN siblings are shown one by one


def test_weak_types_python_scalars_and_dtypes() -> None:
    tree = {"a": jnp.asarray(1.0), "b": jnp.ones(2, jnp.bfloat16), "c": 3, "d": None, "e": jnp.asarray(True)}
    rows = {row.label: row.summary for row in oi.describe(tree)}
    assert rows == {"": "dict: 4 leaves, bf16/bool/f32, 9 B", "a": "weak_f32[] = 1", "b": "bf16[2]",
                    "c": "int = 3", "d": "None", "e": "bool[] = True"}  # fmt: skip


def test_every_row_query_selects_its_node() -> None:
    for state in states().values():
        for row in oi.describe(state):
            assert oi.get(state, row.query) is oi.get(state, row.path), row


def test_rows_are_named_tuples_and_to_dict() -> None:
    description = oi.describe(wrapped_state("partition"))
    row = next(r for r in description if r.label == "learning_rate" and "0.001" in r.summary)
    assert row.query == "decay.learning_rate"
    assert isinstance(row, oi.Row) and row.type == "ArrayImpl"
    entry = description.to_dict()[".inner_states['decay'].inner_state.hyperparams['learning_rate']"]
    assert entry == {"query": "decay.learning_rate", "type": "ArrayImpl", "summary": "f32[] = 0.001"}


def test_tracers_show_shapes_and_dtypes_without_values() -> None:
    seen = []

    @jax.jit
    def inspect(state: Any) -> Any:
        seen.append(str(oi.describe(state)))
        return state

    inspect(trained(seed_optimizer()))
    assert "learning_rate: f32[] (scheduled)" in seen[0]
    assert "= " not in seen[0]


def test_ipython_pretty_and_html() -> None:
    description = oi.describe(trained(seed_optimizer()))
    assert IPython.lib.pretty.pretty(description) == str(description)
    page = description._repr_html_()

    class Checker(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []
            self.details = 0

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            self.stack.append(tag)
            self.details += tag == "details"

        def handle_endtag(self, tag: str) -> None:
            assert self.stack.pop() == tag

    checker = Checker()
    checker.feed(page)
    assert checker.stack == [] and checker.details >= 5
    assert (
        '<span class="oi-label">learning_rate</span>: f32[] = 0.0001 '
        '<span class="oi-tag">(scheduled, used at step 1)</span>' in page
    )
    assert "<script" not in page and "javascript" not in page.lower()


def test_the_notebook_view_indents_linearly_and_opens_folded_nodes() -> None:
    state = seed_optimizer().init(layered_params(100))
    page = oi.describe(state)._repr_html_()
    # Indentation comes from one constant margin per nesting level: nothing grows with depth.
    assert "margin-left: 1.6em" in page and "margin-left: 2em" not in page and "style=" not in page
    # A folded subtree is a closed <details> that lists its first keys.
    assert '<details class=""><summary title="[1].inner_state[0].mu">' in page
    assert "layer0, layer1, layer10, layer11" in page and "88 more" in page
    # Hyperparameters and counters are marked, and each row's query can be selected and copied.
    assert '<div class="oi-hyper" title="[1].hyperparams[&#x27;weight_decay&#x27;]">' in page
    assert '<div class="oi-counter" title="[1].count">' in page
    assert '<code class="oi-q" title="the query that selects it alone">weight_decay</code>' in page


def test_nnx_variables_are_one_line() -> None:
    optimizer = nnx_optimizer()
    text = str(oi.describe(optimizer.opt_state))
    assert "learning_rate: OptArray f32[] = 0 (scheduled, for step 0)" in text
    assert ".value" not in text


def test_describe_is_safe_on_sharded_arrays() -> None:
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, optax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import optree_inspect as oi
        mesh = Mesh(np.array(jax.devices()), ("data",))
        state = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).init({"w": jnp.ones((16, 4))})
        state = jax.tree.map(
            lambda x: jax.device_put(x, NamedSharding(mesh, P("data") if x.ndim else P())), state)
        print(oi.describe(state))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "learning_rate: f32[] = 0.001 @ replicated(8)" in result.stdout
    assert "w: f32[16,4] @ P('data',)" in result.stdout


# Rows as data ----------------------------------------------------------------------------------


def _rows_by_keystr(description: oi.Description) -> dict[str, oi.Row]:
    return {jax.tree_util.keystr(row.path): row for row in description}


def test_rows_hold_what_their_summary_says_as_data() -> None:
    rows = _rows_by_keystr(oi.describe(trained(seed_optimizer())))
    root = rows[""]
    assert root.kind == "node" and root.leaves is not None
    assert (root.leaves.total, root.leaves.dtypes, root.leaves.nbytes) == (15, ("f32", "i32"), 260)
    rate = rows["[1].hyperparams['learning_rate']"]
    assert (rate.kind, rate.role, rate.scheduled) == ("leaf", "hyperparameter", Scheduled(2))
    assert rate.leaf == LeafSummary("ArrayImpl", "f32", (), False, "0.0001")
    count = rows["[1].count"]
    assert count.role == "counter" and count.leaf == LeafSummary("ArrayImpl", "i32", (), False, "2")
    nu = rows["[1].inner_state[0].nu"]
    assert (nu.kind, nu.like, nu.arity, nu.first_keys) == (
        "like",
        rows["[1].inner_state[0].mu"].path,
        2,
        ("dense1", "head"),
    )
    assert nu.leaves == Leaves(3, ("f32",), 112)
    assert rows["[0]"].kind == "node" and rows["[0]"].leaf is None and rows["[0]"].leaves is None


def test_the_first_nine_fields_unpack_as_before() -> None:
    row = next(iter(oi.describe({"a": jnp.ones(2)}, stats=True)))
    path, query, depth, label, type_name, summary, folded, like, stats = row[:9]
    assert (path, query, depth, label, type_name, folded, like) == ((), "", 0, "", "dict", False, None)
    assert summary == "dict: 1 leaf, f32, 8 B" and stats is not None and stats["min"] == 1.0
    assert oi.Row(*row[:8]).kind == "node"  # the new fields have defaults


def test_runs_more_and_folded_rows_as_data() -> None:
    runs = list(oi.describe(tuple(optax.EmptyState() for _ in range(100))))
    assert (runs[-1].kind, runs[-1].siblings, runs[-1].arity, runs[-1].like) == (
        "run",
        99,
        0,
        (SequenceKey(0),),
    )
    wide = list(oi.describe(tuple(optax.EmptyState() if i % 2 else optax.MaskedNode() for i in range(100))))
    assert (wide[-1].kind, wide[-1].siblings, wide[-1].label) == ("more", 76, "")
    folded = _rows_by_keystr(oi.describe(seed_optimizer().init(layered_params(100))))["[1].inner_state[0].mu"]
    assert (folded.kind, folded.arity, folded.leaves) == ("fold", 100, Leaves(200, ("f32",), 100 * 20 * 4))
    assert (
        folded.first_keys[:4] == ("layer0", "layer1", "layer10", "layer11") and len(folded.first_keys) == 12
    )


def test_values_and_optimizer_rows_as_data() -> None:
    poisoned = oi.set(
        trained(seed_optimizer()), "mu.dense1.w", jnp.full((4, 4), jnp.nan).at[0, 0].set(jnp.inf)
    )
    rows = _rows_by_keystr(oi.describe(poisoned, stats=True))
    assert rows[""].nonfinite == (1, 1)
    assert (rows["[1].inner_state[0].mu['dense1']['w']"].stats or {}).get("nan") == 15
    tx = optax.adamw(optax.linear_schedule(0.0, 1.0, 10), weight_decay=0.05)
    held = {row.label: row for row in oi.describe(tx.init(PARAMS), optimizer=tx) if row.kind == "optimizer"}
    assert held["weight_decay"].held == Held("0.05", False, None)
    assert held["learning_rate"].held == Held("0", True, 0)


@pytest.mark.parametrize(
    ("leaf", "text"),
    [
        (jnp.zeros((2, 3)), "f32[2,3]"),
        (jnp.asarray(1.0), "weak_f32[] = 1"),
        (jnp.float32(0.5), "f32[] = 0.5"),
        (jnp.ones(2, jnp.bfloat16), "bf16[2]"),
        (jnp.asarray(True), "bool[] = True"),
        (jax.random.key(0), "key<fry>[]"),
        (jax.ShapeDtypeStruct((3,), jnp.float32), "f32[3]"),
        (3, "int = 3"),
        (2.5, "float = 2.5"),
        (True, "bool = True"),
        (None, "None"),
        ("text", "str"),
        (__import__("numpy").float64(2.5), "f64[] = 2.5"),
    ],
)
def test_a_leaf_row_shows_the_leaf_s_short_text_and_its_parts(leaf: Any, text: str) -> None:
    [row] = [row for row in oi.describe({"x": leaf}) if row.label == "x"]
    assert row.summary == text and row.kind == "leaf"
    assert row.leaf is not None and row.leaf.dtype == (
        None if "[" not in text else text.split("[")[0].removeprefix("weak_")
    )
    assert row.leaf.weak == text.startswith("weak_")


def test_a_deleted_leaf_row_says_so() -> None:
    leaf = jnp.ones(3) + 1
    leaf.delete()
    [row] = [row for row in oi.describe({"x": leaf}) if row.label == "x"]
    assert row.summary == "f32[3] (deleted)" and row.leaf is not None and row.leaf.deleted


def test_the_notebook_view_reads_marks_from_data_not_from_names() -> None:
    params = {"scheduled": jnp.ones(2), "b": jnp.ones(2), "z": jnp.ones(3)}
    labels = {"scheduled": "a", "b": "b", "z": "a"}
    state = optax.partition({"a": optax.adam(1e-3), "b": optax.sgd(1e-2, momentum=0.9)}, labels).init(params)
    description = oi.describe(state)
    assert "2 leaves (scheduled, z), 1 masked" in str(description)
    assert 'class="oi-tag"' not in description._repr_html_()  # a key named `scheduled` is no mark


def test_description_report_and_diff_share_one_listing() -> None:
    description = oi.describe({"a": jnp.ones(2)})
    report = oi.check({"a": jnp.array([jnp.nan])})
    difference = oi.diff({"a": 1}, {"a": 2})
    for listing in (description, report, difference):
        assert isinstance(listing, Listing) and len(listing) == len(list(listing)) and listing
        assert IPython.lib.pretty.pretty(listing) == repr(listing)
    assert repr(report) == "Report(1 finding)\nnonfinite: a: 1 NaN in 1 element (f32[1])"
    assert report._repr_html_() is None  # a notebook shows a report's plain repr
    assert (
        repr(oi.check({"a": jnp.ones(1)})) == "Report(0 findings)" and str(oi.diff(1, 1)) == "No differences."
    )
    assert difference._repr_html_() == (
        '<div class="optree-inspect" style="font-family: monospace">'
        "<div>[&#x27;a&#x27;]: value: int = 1 -&gt; int = 2</div></div>"
    )


# hyperparams -----------------------------------------------------------------------------------


def test_hyperparams_keyed_by_shortest_query_in_tree_order() -> None:
    values = oi.hyperparams(trained(seed_optimizer()))
    assert list(values) == ["b1", "b2", "eps", "eps_root", "learning_rate", "weight_decay"]
    assert float(values["learning_rate"]) == pytest.approx(1e-4)
    state = wrapped_state("partition")
    partition = oi.hyperparams(state)
    assert "decay.learning_rate" in partition and "no_decay.learning_rate" in partition
    for query, value in partition.items():
        assert oi.get(state, query) is value


def test_hyperparams_counters_are_opt_in() -> None:
    state = wrapped_state("multi_steps")
    assert "gradient_step" not in oi.hyperparams(state)
    with_counters = oi.hyperparams(state, counters=True)
    assert int(with_counters["gradient_step"]) == 1 and int(with_counters["mini_step"]) == 0
    assert not any("hyperparams_states" in q for q in with_counters)
    # A parameter called `count` is not a counter; `>` names the state's own field alone.
    state = optax.adam(1e-3).init({"count": jnp.zeros(2)})
    counters = oi.hyperparams(state, counters=True)
    assert list(counters) == ["ScaleByAdamState>count"]
    assert oi.get(state, "ScaleByAdamState>count") is state[0].count


def test_hyperparams_under_jit_and_empty() -> None:
    @jax.jit
    def metrics(state: Any) -> dict[str, jax.Array]:
        return oi.hyperparams(state)

    assert float(metrics(trained(seed_optimizer()))["b1"]) == pytest.approx(0.9)
    assert oi.hyperparams(optax.sgd(0.1).init(PARAMS)) == {}


def test_hyperparams_unwraps_nnx_variables() -> None:
    optimizer = nnx_optimizer()
    values = oi.hyperparams(optimizer.opt_state)
    assert isinstance(values["b1"], jax.Array)


def test_the_readme_shows_what_describe_prints() -> None:
    readme = (GOLDEN.parent.parent / "README.md").read_text()
    assert (GOLDEN / "seed_chain.txt").read_text() in readme


def test_each_scheduled_value_says_which_step_it_belongs_to() -> None:
    tx = seed_optimizer()
    assert "(scheduled, for step 0)" in str(oi.describe(tx.init(PARAMS)))
    assert "(scheduled, used at step 2)" in str(oi.describe(trained(tx, steps=3)))
    plain = optax.adamw(optax.linear_schedule(1.0, 0.0, 10))
    text = str(oi.describe(trained(plain, steps=3), optimizer=plain))
    assert "learning_rate: 0.7 (schedule in the optimizer, for step 3, the next update)" in text
    abstract = str(oi.describe(jax.eval_shape(plain.init, PARAMS), optimizer=plain))
    assert "learning_rate: ? (schedule in the optimizer, for the next update)" in abstract


def test_hyperparams_keys_survive_wrapping() -> None:
    """Logging keys stay the same when the optimizer is wrapped: `MultiSteps`, a `TrainState`,
    `partition` with one optimized label."""
    from flax.training import train_state

    base = oi.hyperparams(trained(seed_optimizer()), counters=True)
    assert "InjectStatefulHyperparamsState>count" in base and "ScaleByAdamState.count" in base
    partition = optax.partition({"decay": seed_optimizer(), "no_decay": optax.set_to_zero()}, LABELS)
    wrapped = {
        "multi_steps": trained(optax.MultiSteps(seed_optimizer(), 2).gradient_transformation()),
        "partition": trained(partition),
        "train_state": train_state.TrainState.create(
            apply_fn=None, params=PARAMS, tx=optax.MultiSteps(partition, 2)
        ),
    }
    for name, state in wrapped.items():
        keys = oi.hyperparams(state, counters=True)
        assert set(base) <= set(keys), (name, set(base) - set(keys))
        for key in base:
            assert oi.get(state, key) is keys[key] or jnp.array_equal(oi.get(state, key), keys[key])
    # Where two labels hold the same optimizer, the label names them apart.
    both = optax.partition({"decay": seed_optimizer(), "no_decay": seed_optimizer()}, LABELS)
    keys = oi.hyperparams(both.init(PARAMS), counters=True)
    assert {"decay.InjectStatefulHyperparamsState>count", "no_decay.learning_rate"} <= set(keys)
