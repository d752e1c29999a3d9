"""`hyperparams`: every injected hyperparameter of a state, for a logger or a metric."""

from __future__ import annotations

from typing import Any

from jaxtyping import PyTree

from .._cache import structure_index
from .._errors import raised_here
from .._leaf import value_of
from .._naming import attached_query, stable_query
from .._paths import value_at
from .closures import Optimizer, read_optimizer
from .states import hyperparameter_nodes, is_counter


@raised_here
def hyperparams(
    tree: PyTree, /, *, counters: bool = False, optimizer: Optimizer | None = None
) -> dict[str, PyTree]:
    """Every injected hyperparameter, keyed by its shortest unique query, in tree order.

    A scheduled one is included with the value the last update used (at step `count - 1`). With
    `counters=True`, the scalar step counters of the state (`count`, `gradient_step`, ...) are
    included too, keyed the same way. Values are arrays (for an nnx Variable, typed or restored, the
    array it holds), tracers
    inside `jax.jit`. With `optimizer=`, the hyperparameters it keeps in its closures are included
    too, keyed the same way: numbers, and for a schedule the value it gives for the next update
    (at step `count`).

    ```python
    >>> import jax.numpy as jnp, optax, optree_inspect as oi
    >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    >>> oi.hyperparams(tx.init({"w": jnp.zeros(2)}))
    {'learning_rate': Array(0.1, dtype=float32), 'momentum': Array(0.9, dtype=float32)}

    ```
    """
    index = structure_index(tree)
    reading = read_optimizer(optimizer, tree) if optimizer is not None else None
    nodes = hyperparameter_nodes(index)
    if counters:
        nodes.extend(node for node in range(1, len(index)) if is_counter(index, node))
    entries: list[tuple[int, int, str, Any]] = []
    for node in set(nodes):
        value = value_of(value_at(tree, index.path(node)))
        entries.append((node, 0, stable_query(index, node), value))
    if reading is not None:
        for order, constant in enumerate(reading.constants, start=1):
            node = index.number_of(constant.node_path) or 0
            query = attached_query(tree, index, constant, reading.constants)
            entries.append((node, order, query, constant.value))
    return {query: value for _, _, query, value in sorted(entries, key=lambda e: e[:2])}
