"""`describe` (docs/reading.md): the plan (`_layout`), its rows (`_rows`) with the values
(`stats=True`) and the optimizer's hyperparameters (`optimizer=`), and their renderers (`_render`).

The plan depends on the structure only, so it is memoised on the structure index; each call reads
the leaves' shapes and dtypes and the few scalars it shows, never other array data.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.tree_util import keystr
from jaxtyping import PyTree

from ._cache import index_and_leaves
from ._errors import bounded, raised_here
from ._index import StructureIndex
from ._keys import KeyPath
from ._layout import Line, has_children, layout_of, line_entries
from ._leaf import scalar_text
from ._listing import Listing
from ._naming import attached_query, shortest_query
from ._optax.closures import ConstantHyperparameter, Optimizer, OptimizerReading, read_optimizer
from ._render import html_of, summary_text, text_line
from ._rows import Held, Row, row_node, rows_of, step_of
from ._values import leaf_table, summarise


class Description(Listing[Row]):
    """What `describe` returns: print it, iterate its rows, or show it in IPython or a notebook."""

    def __init__(self, index: StructureIndex, rows: tuple[Row, ...], nodes: tuple[int | None, ...]) -> None:
        super().__init__(rows)
        self._index = index
        self._nodes = nodes

    @functools.cached_property
    def rows(self) -> tuple[Row, ...]:
        """Every shown line, in order, with its summary and the shortest query that selects its
        node alone (named here, on first use: naming every row costs time near-linear in the tree)."""
        index = self._index
        return tuple(
            row._replace(
                query=shortest_query(index, node) if node and not row.query else row.query,
                summary=summary_text(row),
            )
            for row, node in zip(self._items, self._nodes, strict=True)
        )

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def _line(self, item: Row) -> str:
        return text_line(item)

    def _repr_html_(self) -> str:
        return html_of(self.rows)

    def to_dict(self) -> dict[str, dict[str, str]]:
        """`{keystr: {"query", "type", "summary"}}` for every shown node, for logs and tests."""
        return {
            keystr(row.path): {"query": row.query, "type": row.type, "summary": row.summary}
            for row in self.rows
            if row.type != "optimizer" or row.path
        }


@raised_here
def describe(tree: PyTree, /, *, optimizer: Optimizer | None = None, stats: bool = False) -> Description:
    """A compact picture of `tree`: one line a node, params-shaped subtrees folded.

    Arrays are summarised as `f32[4,4]` (`weak_f32[]` for weak types), scalars show their value,
    scheduled hyperparameters are marked, and a non-trivial sharding is shown. A params-shaped
    subtree (containers and arrays only) of more than 16 leaves is one line with its key, leaf
    count, dtypes and bytes; one with the structure of a subtree already shown says which it is
    like. Hyperparameters and counters are never folded. Safe on tracers and on sharded arrays: it
    reads no array data but the scalars it shows. With `optimizer=`, the hyperparameters the
    optimizer keeps in its closures are shown under the state node of their transformation,
    marked as held by the optimizer, and what could not be matched is said on a last line. With
    `stats=True`, each row also shows its values (NaN and Inf counts first, marked `!!`, then the
    range, RMS and share of zeros of the finite values), computed on the device.

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> print(oi.describe(optax.adam(1e-3).init({"w": jnp.zeros(3), "b": jnp.zeros(1)})))
    tuple: 5 leaves, f32/i32, 36 B
      [0]: ScaleByAdamState
        count: i32[] = 0
        mu: dict
          b: f32[1]
          w: f32[3]
        nu: like [0].mu, 2 leaves, f32, 16 B
      [1]: EmptyState

    ```
    """
    index, leaves = index_and_leaves(tree)
    reading = read_optimizer(optimizer, tree) if optimizer is not None else None
    lines = layout_of(index)
    rows = rows_of(index, tree, leaves, lines)
    nodes: list[int | None] = [line.node if line.kind != "more" else None for line in lines]
    if stats and not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        rows = _with_values(index, leaves, lines, rows)
    if reading is not None:
        rows, nodes = _with_optimizer(tree, index, rows, nodes, reading)
    return Description(index, tuple(rows), tuple(nodes))


def _with_values(index: StructureIndex, leaves: list[Any], lines: list[Line], rows: list[Row]) -> list[Row]:
    """`rows` with the statistics of the leaves they stand for (`line_entries`; the root's, all
    leaves), and on the root how many leaves hold NaN and Inf."""
    table = leaf_table(leaves)
    result = []
    for number, (line, row) in enumerate(zip(lines, rows, strict=True)):
        spans = [span for _, span in line_entries(index, lines, number)]
        if line.node == 0 and line.kind == "node":
            spans = [slice(0, len(leaves))]
        positions = [p for span in spans for p in range(span.start, span.stop)]
        if not table.numeric[positions].any():
            result.append(row)  # no numbers, or an expanded node's: on its children's rows
            continue
        values = {key: value.item() for key, value in summarise(table, positions).items()}
        row = row._replace(stats=values)
        if (values["nan"] or values["inf"]) and row.kind in ("fold", "like", "run", "more"):
            row = row._replace(first_nonfinite=_first_nonfinite(index, table, positions))
        if line.node == 0 and has_children(index, 0):
            counts = np.asarray(table.counts)
            row = row._replace(nonfinite=(int((counts[:, 0] > 0).sum()), int((counts[:, 1] > 0).sum())))
        result.append(row)
    return result


def _first_nonfinite(
    index: StructureIndex, table: Any, positions: list[int], shown: int = 3
) -> tuple[str, ...]:
    """The queries of the first leaves at `positions` that hold NaN or Inf (their rows' nodes)."""
    counts = np.asarray(table.counts)[positions]
    bad = [positions[i] for i in np.flatnonzero((counts[:, 0] > 0) | (counts[:, 1] > 0))[: shown + 1]]
    names = tuple(shortest_query(index, row_node(index, index.leaf_nodes[p])) for p in bad[:shown])
    return (*names, "...") if len(bad) > shown else names


def _with_optimizer(
    tree: Any, index: StructureIndex, rows: list[Row], nodes: list[int | None], reading: OptimizerReading
) -> tuple[list[Row], list[int | None]]:
    """`rows` with a row for each optimizer-held hyperparameter under its state node's row, and
    one for each part of the optimizer that could not be matched."""
    by_node: dict[KeyPath, list[ConstantHyperparameter]] = {}
    for constant in reading.constants:
        by_node.setdefault(constant.node_path, []).append(constant)
    result: list[Row] = []
    result_nodes: list[int | None] = []
    for row, node in zip(rows, nodes, strict=True):
        result.append(row)
        result_nodes.append(node)
        for constant in by_node.pop(row.path, []) if not row.folded else []:
            value = "?" if constant.value is None else _number(constant.value)
            step = None
            if constant.schedule is not None and constant.step_path:
                step = step_of(tree, constant.step_path)
            held = Held(value, constant.schedule is not None, step)
            query = attached_query(tree, index, constant, reading.constants)
            depth, name = row.depth + 1, constant.name
            result.append(
                Row(
                    constant.path,
                    query,
                    depth,
                    name,
                    "optimizer",
                    "",
                    False,
                    None,
                    kind="optimizer",
                    held=held,
                )
            )
            result_nodes.append(None)
    for line in reading.unmatched[:8]:
        unmatched = Row(
            (), "", 0, "", "optimizer", "", False, None, kind="unmatched", message=bounded(line, 200)
        )
        result.append(unmatched)
        result_nodes.append(None)
    return result, result_nodes


def _number(value: Any) -> str:
    """A value read from the optimizer: a number, or `?` where it is traced or abstract."""
    if isinstance(value, bool | int | float):
        return f"{value:.6g}" if isinstance(value, float) else str(value)
    text = scalar_text(value) if hasattr(value, "dtype") else None
    return "?" if text is None else text
