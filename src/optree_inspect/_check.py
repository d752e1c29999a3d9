"""What is wrong in a state: `stats` (value statistics by row) and `check` (findings).

>>> import jax.numpy as jnp, optax, optree_inspect as oi
>>> state = optax.adam(1e-3).init({"w": jnp.zeros(3)})
>>> oi.check(oi.set(state, "mu.w", jnp.array([0.0, jnp.nan, 1.0])))
Report(1 finding)
nonfinite: mu.w: 1 NaN in 3 elements (f32[3])
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.tree_util import keystr
from jaxtyping import Array, PyTree

from ._cache import index_and_leaves
from ._errors import bounded, raised_here
from ._index import StructureIndex
from ._keys import KeyPath
from ._layout import layout_of, line_entries
from ._leaf import bytes_text, dtype_name, is_deleted, is_placed, unwrap_all
from ._listing import Listing
from ._naming import shortest_query
from ._optax.closures import Optimizer, read_optimizer
from ._optax.names import DECAY_RATES, EPSILONS
from ._optax.states import hyperparameter_nodes
from ._placement import device_bytes, device_count, placement_text, sharding_of, widest
from ._query import Query, parse_query
from ._resolve import resolve_one
from ._roles import NAMED, PARAMS, leaf_roles, moment_roots, names_under, params_field
from ._rows import row_node
from ._values import leaf_table, nonfinite_candidates, summarise

KINDS = ("nonfinite_origin", "nonfinite", "rounded_hyperparameter", "replicated_moment", "single_device")
"""The kinds of finding, most serious first."""
_SHOWN = 40
_IN_FLOAT32 = "Keep hyperparameters in float32: optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32)."


class Finding(NamedTuple):
    """One thing wrong in a state: its kind (one of `KINDS`), the node's key path, a query that
    selects that node alone, what is wrong, in a sentence, and the tree it is in: `state` (the
    tree checked), or `grads`, `updates` or `params` (given to `check`)."""

    kind: str
    path: KeyPath
    query: str
    message: str
    tree: str = "state"


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
        where = "" if item.tree == "state" else f"[{item.tree}] "
        return f"{item.kind}: {where}{bounded(item.query, 200)}: {item.message}"

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
            (row_node(index, leaf), slice(index.leaf_starts[leaf], index.leaf_starts[leaf] + 1))
            for leaf in range(node, node + index.sizes[node])
            if index.is_leaf[leaf]
        )
    result: dict[str, dict[str, np.number | Array]] = {}
    for node, span in entries:
        if table.numeric[span].any():
            result[shortest_query(index, node) if node else ""] = summarise(table, span)
    return result


@raised_here
def check(
    tree: PyTree,
    /,
    *,
    optimizer: Optimizer | None = None,
    params: PyTree | None = None,
    grads: PyTree | None = None,
    updates: PyTree | None = None,
) -> Report:
    """Findings in `tree`, most serious first (see `KINDS` and docs/health.md):

    - `nonfinite_origin`: where non-finite values started, first, when several leaves hold one: the
      earliest of the gradients (`grads=`), the updates (`updates=`), the state's moments and the
      parameters that holds one, its share of that tree's leaves, and what followed;
    - `nonfinite`: a leaf holding NaN or Inf, with the counts, in the order the values flow
      (gradients, updates, moments and the rest of the state, then the parameters);
    - `rounded_hyperparameter`: an injected decay rate (`b1`, `b2`, `decay`, `momentum`) equal to
      1, or an `eps` equal to 0, in its dtype (a bf16 `b2` of 0.999 is stored as 1);
    - `replicated_moment`: a moment leaf less sharded than its parameter (more memory on every
      device), where the tree holds its params (a `params` field, as a `TrainState` has) or
      `params=` gives them; a moment more sharded than its parameter (ZeRO-1) is no finding;
    - `single_device`: an array (not a scalar) on one device, beside arrays (in `tree` or
      `params=`) that span several: that device holds all of it.

    Each placement finding says how to move the leaf: `oi.set(..., placement="value")`.

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
    values = unwrap_all(leaves)
    findings: list[Finding] = []
    if not any(isinstance(v, jax.core.Tracer) for v in values):  # abstract and deleted leaves: no values
        findings.extend(_nonfinite_by_flow(index, values, params, grads, updates))
        findings.extend(_rounded(index, values))
    findings.extend(
        finding for _, finding in placement_findings(index, values, params_of(index, values, params))
    )
    return Report(findings)


class _Stage(NamedTuple):
    """A tree the values flow through, with its non-finite findings and its count of leaves."""

    tree: str
    noun: str
    findings: list[Finding]
    leaves: int


def _nonfinite_by_flow(
    index: StructureIndex, values: list[Any], params: Any, grads: Any, updates: Any
) -> list[Finding]:
    """`nonfinite` findings in the order the values flow (gradients, updates, the state's moments,
    the rest of the state, the parameters), after a `nonfinite_origin` finding."""
    stages = [
        _stage_of(tree, name, noun)
        for name, noun, tree in (("grads", "gradient", grads), ("updates", "update", updates))
        if tree is not None
    ]
    found = _nonfinite_at(index, values)
    given = _stage_of(params, "params", "parameter") if params is not None else None
    if not found and not any(stage.findings for stage in stages) and not (given and given.findings):
        return []
    roles = leaf_roles(index, values)
    groups: dict[str, list[Finding]] = {"moment": [], "other": [], "parameter": []}
    counts = dict.fromkeys(groups, 0)
    for role in roles:
        counts[_group(role)] += 1
    for position, finding in found:
        groups[_group(roles[position])].append(finding)
    stages += [_Stage("state", noun, groups[noun], counts[noun]) for noun in ("moment", "other")]
    mine = _Stage("state", "parameter", groups["parameter"], counts["parameter"])
    if given is not None:
        mine = given._replace(findings=mine.findings + given.findings, leaves=mine.leaves + given.leaves)
    stages.append(mine)
    flowing = [finding for stage in stages for finding in stage.findings]
    return [_origin(stages), *flowing] if len(flowing) > 1 else flowing


def _group(role: str) -> str:
    """Where a leaf of the state stands in the flow of values, by its role."""
    if role == PARAMS:
        return "parameter"
    return "other" if role in NAMED else "moment"


def _stage_of(tree: Any, name: str, noun: str) -> _Stage:
    index, leaves = index_and_leaves(tree)
    values = unwrap_all(leaves)
    found = [finding._replace(tree=name) for finding in _nonfinite(index, values)]
    return _Stage(name, noun, found, len(values))


def _origin(stages: list[_Stage]) -> Finding:
    """Where the non-finite values started: the earliest stage that holds one, and what followed."""
    first = next(number for number, stage in enumerate(stages) if stage.findings)
    stage = stages[first]
    names = ", ".join(f"`{bounded(f.query, 60)}`" for f in stage.findings[:3])
    names += ", ..." if len(stage.findings) > 3 else ""
    bad = len(stage.findings)
    text = f"{bad:,} of {stage.leaves:,} {stage.noun} leaves non-finite ({names})"
    later = [s for s in stages[first + 1 :] if s.leaves and (s.findings or s.noun != "other")]
    if later:
        every = all(len(s.findings) == s.leaves for s in later)
        if every and bad < stage.leaves:
            named = list(dict.fromkeys(s.noun for s in later))
            nouns = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]
            text += (
                f"; every {nouns} leaf followed, as a step that mixes leaves (a global-norm clip, "
                "a global gradient norm, a loss scale) spreads one non-finite value to all"
            )
        elif any(s.findings for s in later):
            parts = [f"{len(s.findings):,} of {s.leaves:,} {s.noun} leaves" for s in later if s.findings]
            text += "; then " + ", ".join(parts)
    if not any(s.tree in ("grads", "updates") for s in stages):
        text += "; pass grads= (and updates=) to see whether it started in the gradients"
    origin = stage.findings[0]
    return Finding("nonfinite_origin", origin.path, origin.query, text + ".", origin.tree)


def _nonfinite(index: StructureIndex, values: list[Any]) -> list[Finding]:
    """A `nonfinite` finding for each leaf that holds NaN or Inf, in tree order."""
    return [finding for _, finding in _nonfinite_at(index, values)]


def _nonfinite_at(index: StructureIndex, values: list[Any]) -> list[tuple[int, Finding]]:
    """`_nonfinite`, each finding with its leaf's position."""
    candidates = nonfinite_candidates(values)  # one read of each float leaf; counts of these alone
    if not candidates:
        return []
    counts = np.asarray(leaf_table([values[p] for p in candidates]).counts)
    nodes = index.leaf_nodes
    findings = []
    for row, position in enumerate(candidates):
        nan, inf = int(counts[row, 0]), int(counts[row, 1])
        if not (nan or inf):
            continue
        leaf = values[position]
        what = " and ".join(f"{n:,} {name}" for n, name in ((nan, "NaN"), (inf, "Inf")) if n)
        size = int(np.size(leaf))
        dtype = getattr(leaf, "dtype", None)
        shape = ",".join(map(str, np.shape(leaf)))
        kind = f"{dtype_name(dtype)}[{shape}]" if dtype is not None else type(leaf).__name__
        message = f"{what} in {size:,} element{'s' * (size != 1)} ({kind})"
        node = nodes[position]
        findings.append(
            (position, Finding("nonfinite", index.path(node), shortest_query(index, node), message))
        )
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
    if isinstance(value, jax.Array) and is_deleted(value):
        return None
    if isinstance(value, jax.Array) and not value.is_fully_addressable:  # another process's shards
        if not (value.is_fully_replicated and value.addressable_shards):
            return None
        value = value.addressable_data(0)  # this process's own copy of a replicated value
    return np.asarray(value)


def _members(wrong: np.ndarray, shown: int = 4) -> str:
    """Which members of a non-scalar hyperparameter are wrong: ` at 2 of 8 members ([0], [5])`."""
    if wrong.ndim == 0:
        return ""
    indices = [str(list(map(int, index))) for index in np.argwhere(wrong)[:shown]]
    more = ", ..." if int(wrong.sum()) > shown else ""
    return f" at {int(wrong.sum()):,} of {wrong.size:,} members ({', '.join(indices)}{more})"


class Params(NamedTuple):
    """The parameters a state's moments are compared with: their index, values (nnx Variables
    unwrapped) and root node (the tree's own `params`/`model` field, or 0 for `params=`)."""

    structure: StructureIndex
    values: list[Any]
    root: int


def params_of(index: StructureIndex, values: list[Any], params: Any) -> Params | None:
    """`params=` (any tree), else the tree's own parameters (`params_field`), else None."""
    if params is not None:
        params_index, params_leaves = index_and_leaves(params)
        return Params(params_index, unwrap_all(params_leaves), 0)
    field = params_field(index)
    return None if field is None else Params(index, values, field)


def placement_findings(
    index: StructureIndex, values: list[Any], params: Params | None, spread: int | None = None
) -> list[tuple[int, Finding]]:
    """`replicated_moment` and `single_device` findings (see `check`), in tree order, each with
    the position of its first leaf: none where every array lives on one device (`spread`, the
    most devices an array spans, where known)."""
    by_name = _params_by_name(params) if params is not None else {}
    if spread is None:
        spread = max(widest(values), widest(params.values) if params is not None and params.root == 0 else 0)
    if spread <= 1:
        return []
    findings: dict[int, tuple[int, Finding]] = {}
    for leaf, position, name in _moment_leaves(index):
        param = by_name.get(name)
        if param is None:
            continue
        node = row_node(index, leaf)
        query = shortest_query(index, node)
        message = _less_sharded(values[position], param, query)
        if message:
            findings[leaf] = position, Finding("replicated_moment", index.path(node), query, message)
    for position, leaf in enumerate(index.leaf_nodes):
        value = values[position]
        if leaf in findings or not is_placed(value) or not np.ndim(value) or not np.size(value):
            continue
        found = device_bytes(value)  # None: deleted, or offloaded to host memory
        if found and len(found) == 1 and device_count(sharding_of(value)) == 1:
            node = row_node(index, leaf)
            query = shortest_query(index, node)
            findings[leaf] = (
                position,
                Finding("single_device", index.path(node), query, _alone(value, spread, query)),
            )
    return [findings[leaf] for leaf in sorted(findings)]


_MOMENT_LEAVES = ("check", "moment leaves")


def _moment_leaves(index: StructureIndex) -> list[tuple[int, int, tuple[str, ...]]]:
    """Each leaf of a moment field: its node, its position among the leaves, and its key names
    under the field (memoised on the index)."""
    cached = index.memo.results.get(_MOMENT_LEAVES)
    if cached is None:
        positions = {node: position for position, node in enumerate(index.leaf_nodes)}
        cached = index.memo.results[_MOMENT_LEAVES] = [
            (leaf, positions[leaf], names_under(index, root, leaf))
            for root in moment_roots(index)
            for leaf in range(root, root + index.sizes[root])
            if index.is_leaf[leaf]
        ]
    return cached


def _alone(value: Any, spread: int, query: str) -> str:
    size = bytes_text(math.prod(value.shape) * int(value.dtype.itemsize))
    return (
        f"{size} {placement_text(value)}, beside arrays over {spread} devices: that device holds all of "
        f"it. Move it onto your mesh with the spec it should have: state = oi.set(state, "
        f"{bounded(query, 200)!r}, lambda x: jax.device_put(x, NamedSharding(mesh, spec)), "
        "placement='value'); or create the state placed: jax.jit(tx.init, out_shardings=...)."
    )


def _most_elements(leaf: Any) -> int | None:
    """The most elements of `leaf` any one device holds (None for a deleted array)."""
    found = device_bytes(leaf)
    return None if not found else max(count for _, count in found) // max(1, int(leaf.dtype.itemsize))


class _Param(NamedTuple):
    """A parameter as a placement finding names it: its value, and the code that reads it where
    the fix runs (`params['w']` for `params=`, `oi.get(state, 'params.w')` in the state)."""

    value: Any
    reference: str


def _params_by_name(params: Params) -> dict[tuple[str, ...], _Param]:
    """The parameters by their key names from their root."""
    names = _param_names(params.structure, params.root)
    return {name: _Param(params.values[position], reference) for position, name, reference in names}


def _param_names(index: StructureIndex, root: int) -> list[tuple[int, tuple[str, ...], str]]:
    """Each leaf under `root`: its position, its key names from `root`, and the code that reads
    it in a fix: `params[...]` for a tree given as `params=` (root 0), else `oi.get(state, query)`
    (memoised on the index)."""
    key = ("check", "param names", root)
    cached = index.memo.results.get(key)
    if cached is None:
        cached = []
        for position, leaf in enumerate(index.leaf_nodes):
            if root <= leaf < root + index.sizes[root]:
                node = row_node(index, leaf)  # an nnx Variable's value: the Variable
                if root == 0:
                    reference = f"params{keystr(index.path(node))}"
                else:
                    reference = f"oi.get(state, {shortest_query(index, node)!r})"
                cached.append((position, names_under(index, root, leaf), bounded(reference, 120)))
        index.memo.results[key] = cached
    return cached


def _less_sharded(moment: Any, param: _Param, query: str) -> str | None:
    """Why `moment` takes more memory per device than its parameter, or None: concrete arrays, or
    abstract ones (`jax.ShapeDtypeStruct`, as `jax.eval_shape` gives) that carry a sharding."""
    value = param.value
    if not (is_placed(moment) and is_placed(value)) or moment.shape != value.shape:
        return None
    if sharding_of(moment) == sharding_of(value):
        return None
    mine, theirs = _most_elements(moment), _most_elements(value)
    if mine is None or theirs is None or mine <= theirs:
        return None
    target = f"{param.reference}.sharding"
    return (
        f"{mine:,} elements on its fullest device ({placement_text(moment)}), {mine / theirs:.3g}x its "
        f"parameter's {theirs:,} ({placement_text(value)}). Place it like the parameter: state = "
        f"oi.set(state, {bounded(query, 200)!r}, lambda x: jax.device_put(x, {target}), "
        "placement='value') (`jax.jit(tx.init)` alone does not place zeros like the params)."
    )
