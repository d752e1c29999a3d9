"""What is wrong in a state: `stats` (value statistics by row) and `check` (findings).

>>> import jax.numpy as jnp, optax, optree_inspect as oi
>>> state = optax.adam(1e-3).init({"w": jnp.zeros(3)})
>>> oi.check(oi.set(state, "mu.w", jnp.array([0.0, jnp.nan, 1.0])))
Report(1 finding)
nonfinite: mu.w: 1 NaN in 3 elements (f32[3])
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import jax
import numpy as np
from jaxtyping import Array, PyTree

from ._cache import index_and_leaves
from ._compat import partition_spec_text
from ._errors import bounded, raised_here
from ._index import StructureIndex
from ._keys import KeyPath
from ._layout import layout_of, line_entries
from ._leaf import dtype_name, is_deleted, is_placed, unwrap
from ._listing import Listing
from ._naming import shortest_query
from ._optax.closures import Optimizer, read_optimizer
from ._optax.names import DECAY_RATES, EPSILONS
from ._optax.states import hyperparameter_nodes, is_counter
from ._query import Query, parse_query
from ._resolve import resolve_one
from ._values import leaf_table, summarise

KINDS = ("nonfinite", "rounded_hyperparameter", "replicated_moment")
"""The kinds of finding, most serious first."""
_SHOWN = 40
_IN_FLOAT32 = "Keep hyperparameters in float32: optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)."


class Finding(NamedTuple):
    """One thing wrong in a state: its kind (one of `KINDS`), the node's key path, a query that
    selects that node alone, and what is wrong, in a sentence."""

    kind: str
    path: KeyPath
    query: str
    message: str


class Report(Listing[Finding]):
    """What `check` found, most serious first: iterate it, take its `len`, print it (one line a
    finding); it is truthy when anything was found."""

    shown = _SHOWN
    empty = "No findings."
    more = "... {count:,} more findings (iterate the report for all)"

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__(sorted(findings, key=lambda f: KINDS.index(f.kind)))

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every finding, most serious first."""
        return self._items

    def _line(self, item: Finding) -> str:
        return f"{item.kind}: {item.query}: {item.message}"

    def _header(self) -> str:
        count = len(self)
        return f"Report({count} finding{'s' * (count != 1)})"

    def _repr_html_(self) -> None:
        """None: a notebook shows the report's plain repr."""
        return None


@raised_here
def stats(tree: PyTree, query: Query | None = None) -> dict[str, dict[str, np.number | Array]]:
    """The values of `tree` by the rows `describe` shows, keyed by a query that selects the
    entry's node: every leaf or nnx Variable row, every folded or `like` row, each member of a
    run row and each child a "... N more children" row leaves out, so that every leaf is in
    exactly one entry. With `query`, one entry per leaf of the node it selects. Each holds `nan`,
    `inf` (counts), `min`, `max`, `mean`, `rms` and `zero_fraction` (over the finite elements;
    NaN where there is none). Leaves without numbers (PRNG keys, strings, abstract or deleted
    arrays) enter no entry. NumPy int64 and float64 eagerly; under `jit` tracers, so a training
    step can return them as metrics.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> state = optax.adam(1e-3).init({"w": jnp.ones(3)})
    >>> float(oi.stats(state)["mu.w"]["max"]), int(oi.stats(state)["mu.w"]["nan"])
    (0.0, 0)

    ```
    """
    index, leaves = index_and_leaves(tree)
    table = leaf_table(leaves)
    entries: list[tuple[int, slice]] = []
    if query is None:
        lines = layout_of(index)
        entries.extend(entry for number in range(len(lines)) for entry in line_entries(index, lines, number))
    else:
        path, _ = resolve_one(tree, parse_query(query))
        node = index.number_of(path)
        assert node is not None
        entries.extend(
            (_row_node(index, leaf), slice(index.leaf_starts[leaf], index.leaf_starts[leaf] + 1))
            for leaf in range(node, node + index.sizes[node])
            if index.is_leaf[leaf]
        )
    result: dict[str, dict[str, np.number | Array]] = {}
    for node, span in entries:
        if table.numeric[span].any():
            result[shortest_query(index, node) if node else ""] = summarise(table, span)
    return result


def _row_node(index: StructureIndex, leaf: int) -> int:
    """The node whose row shows `leaf`: its nnx Variable where one holds it."""
    parent = index.parents[leaf] if leaf else 0
    return parent if leaf and index.variables[parent] else leaf


@raised_here
def check(tree: PyTree, /, *, optimizer: Optimizer | None = None, params: PyTree | None = None) -> Report:
    """Findings in `tree`, most serious first (see `KINDS` and docs/health.md):

    - `nonfinite`: a leaf holding NaN or Inf, with the counts;
    - `rounded_hyperparameter`: an injected decay rate (`b1`, `b2`, `decay`, `momentum`) equal to
      1, or an `eps` equal to 0, in its dtype (a bf16 `b2` of 0.999 is stored as 1);
    - `replicated_moment`: a moment leaf less sharded than its parameter (more memory on every
      device), where the tree holds its params (a `params` field, as a `TrainState` has) or
      `params=` gives them.

    Values are read from concrete leaves only (abstract and deleted arrays are left out; under
    `jit` nothing is checked); shardings of abstract leaves that carry one are compared too. With
    `optimizer=`, a mismatched optimizer raises `OptimizerMismatchError`, as elsewhere.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> tx = optax.inject_hyperparams(optax.adam)(1e-3, b2=0.999)
    >>> state = tx.init({"w": jnp.zeros(3, jnp.bfloat16)})
    >>> [f.kind for f in oi.check(state)]
    ['rounded_hyperparameter']

    ```
    """
    index, leaves = index_and_leaves(tree)
    if optimizer is not None:
        read_optimizer(optimizer, tree)  # a mismatch is an error, as for every verb
    values = list(map(unwrap, leaves))
    findings: list[Finding] = []
    if not any(isinstance(v, jax.core.Tracer) for v in values):  # abstract and deleted leaves: no values
        findings.extend(_nonfinite(index, values))
        findings.extend(_rounded(index, values))
    findings.extend(_replicated(index, tree, values, params))
    return Report(findings)


def _nonfinite(index: StructureIndex, values: list[Any]) -> list[Finding]:
    table = leaf_table(values)
    counts = np.asarray(table.counts)
    bad = np.flatnonzero((counts[:, 0] > 0) | (counts[:, 1] > 0))
    if not len(bad):
        return []
    nodes = index.leaf_nodes
    findings = []
    for position in bad.tolist():
        nan, inf = int(counts[position, 0]), int(counts[position, 1])
        leaf = values[position]
        what = " and ".join(f"{n:,} {name}" for n, name in ((nan, "NaN"), (inf, "Inf")) if n)
        size = int(np.size(leaf))
        dtype = getattr(leaf, "dtype", None)
        shape = ",".join(map(str, np.shape(leaf)))
        kind = f"{dtype_name(dtype)}[{shape}]" if dtype is not None else type(leaf).__name__
        message = f"{what} in {size:,} element{'s' * (size != 1)} ({kind})"
        node = nodes[position]
        findings.append(Finding("nonfinite", index.path(node), shortest_query(index, node), message))
    return findings


def _rounded(index: StructureIndex, values: list[Any]) -> list[Finding]:
    positions = {node: position for position, node in enumerate(index.leaf_nodes)}
    findings = []
    for node in hyperparameter_nodes(index):
        name = index.texts[node]
        if name not in DECAY_RATES | EPSILONS:
            continue
        leaf_node = node if index.is_leaf[node] else node + 1  # an nnx Variable holds its value
        value = _host_floats(values[positions[leaf_node]] if leaf_node in positions else None)
        if value is None:
            continue
        dtype = value.dtype
        wrong = value == 1.0 if name in DECAY_RATES else value == 0.0
        if not wrong.any():
            continue
        short = dtype_name(dtype)
        low_precision = jax.numpy.finfo(dtype).bits < 32
        where = _members(wrong)
        if name in DECAY_RATES:
            cause = f" (a rate such as 0.999 rounds to 1 in {short})" if low_precision else ""
            message = (
                f"{name} is 1{where} in {short}{cause}: bias correction divides by 1 - {name}**t = 0 and "
                f"the moment stops forgetting. {_IN_FLOAT32}"
            )
        else:
            cause = f" (a small eps such as 1e-8 underflows to 0 in {short})" if low_precision else ""
            message = (
                f"{name} is 0{where} in {short}{cause}: the update divides by sqrt(nu) + {name}, which is "
                f"0 where nu is. {_IN_FLOAT32}"
            )
        findings.append(
            Finding("rounded_hyperparameter", index.path(node), shortest_query(index, node), message)
        )
    return findings


def _host_floats(value: Any) -> np.ndarray | None:
    """A concrete floating hyperparameter's values on the host (any shape: a vmapped ensemble
    holds one a member), or None."""
    if isinstance(value, float):
        return np.asarray(value)
    dtype = getattr(value, "dtype", None)
    if dtype is None or isinstance(value, jax.core.Tracer | jax.ShapeDtypeStruct):
        return None
    if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
        return None
    if isinstance(value, jax.Array) and (is_deleted(value) or not value.is_fully_addressable):
        return None
    return np.asarray(value)


def _members(wrong: np.ndarray, shown: int = 4) -> str:
    """Which members of a non-scalar hyperparameter are wrong: ` at 2 of 8 members ([0], [5])`."""
    if wrong.ndim == 0:
        return ""
    indices = [str(list(map(int, index))) for index in np.argwhere(wrong)[:shown]]
    more = ", ..." if int(wrong.sum()) > shown else ""
    return f" at {int(wrong.sum()):,} of {wrong.size:,} members ({', '.join(indices)}{more})"


def _replicated(index: StructureIndex, tree: Any, values: list[Any], params: Any) -> list[Finding]:
    """Moment leaves stored with more elements per device than their parameters."""
    by_name = _params_by_name(index, values, tree, params)
    if not by_name:
        return []
    findings = []
    positions = {node: position for position, node in enumerate(index.leaf_nodes)}
    for root in _moment_roots(index):
        for leaf in range(root, root + index.sizes[root]):
            if not index.is_leaf[leaf]:
                continue
            param = by_name.get(_name_under(index, root, leaf))
            moment = values[positions[leaf]] if param is not None else None
            message = _less_sharded(moment, param)
            if message:
                findings.append(
                    Finding("replicated_moment", index.path(leaf), shortest_query(index, leaf), message)
                )
    return findings


def _moment_roots(index: StructureIndex) -> list[int]:
    """The fields of optax states that hold params-shaped subtrees (`mu`, `nu`, `trace`), or one
    array where the params are one array (never a counter)."""
    states = itertools.compress(range(len(index)), index.state_names)
    return [
        child
        for state in states
        for child in index.children(state)
        if not index.holds_state[child] and not (index.is_leaf[child] and is_counter(index, child))
    ]


def _name_under(index: StructureIndex, root: int, leaf: int) -> tuple[str, ...]:
    """The key names from `root` (excluded) down to `leaf`: `()` for the root itself."""
    if leaf == root:
        return ()
    return tuple(index.texts[n] for n in [*index.ancestors(leaf)[index.depths[root] + 1 :], leaf])


def _params_by_name(
    index: StructureIndex, values: list[Any], tree: Any, params: Any
) -> dict[tuple[str, ...], Any]:
    """The parameters by their key names from their root: `params=`, or the tree's own `params`
    field (a flax `TrainState`, a dict) or `model` (an `nnx.Optimizer`)."""
    if params is not None:
        params_index, params_leaves = index_and_leaves(params)
        values = list(map(unwrap, params_leaves))
        root, index = 0, params_index
    else:
        candidates = [c for c in index.children(0) if index.texts[c] in ("params", "model")]
        if len(candidates) != 1:
            return {}
        root = candidates[0]
    found = {}
    for position, leaf in enumerate(index.leaf_nodes):
        if root <= leaf < root + index.sizes[root]:
            found[_name_under(index, root, leaf)] = values[position]
    return found


def _less_sharded(moment: Any, param: Any) -> str | None:
    """Why `moment` takes more memory per device than `param`, or None: concrete arrays, or abstract
    ones (`jax.ShapeDtypeStruct`, as `jax.eval_shape` gives) that carry a sharding."""
    if not (is_placed(moment) and is_placed(param)) or moment.shape != param.shape:
        return None
    mine = math.prod(moment.sharding.shard_shape(moment.shape))
    theirs = math.prod(param.sharding.shard_shape(param.shape))
    if mine <= theirs:
        return None
    return (
        f"{mine:,} elements on each device ({_placement(moment)}), {mine / theirs:.3g}x its parameter's "
        f"{theirs:,} ({_placement(param)}). Place it like the parameter: jax.device_put(moment, "
        "param.sharding) (`jax.jit(tx.init)` alone does not place zeros like the params)."
    )


def _placement(leaf: Any) -> str:
    sharding = leaf.sharding
    spec = getattr(sharding, "spec", None)
    if sharding.is_fully_replicated:
        return f"replicated over {len(sharding.device_set)} devices"
    return bounded(partition_spec_text(spec), 80) if spec is not None else bounded(str(sharding), 80)
