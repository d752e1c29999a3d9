"""Hyperparameters an optax optimizer keeps in its closures rather than in its state.

`optax.adamw(schedule, weight_decay=1e-4)` keeps `b1`, `eps`, `weight_decay` and the schedule in
the closures of its update functions; the state holds only the schedule's counter. `read_optimizer`
walks the optimizer in step with the state (chain positions, named_chain names, partition labels,
wrapper fields) and attaches each value to the state node of the transformation that holds it.

This reads optax's closure layout (optax 0.2.8): which free variable of which update function holds
what. A transformation it does not know is reported, never guessed at.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey, keystr

from ._query import KeyPath
from ._tree import _MISSING, child_at, is_namedtuple


class ConstantHyperparameter(NamedTuple):
    """A hyperparameter held by the optimizer, attached to a node of the state."""

    node_path: KeyPath
    """The state node of the transformation that holds it."""
    name: str
    value: Any
    """The constant, or for a schedule the value it gives at the next update."""
    schedule: Callable[[Any], Any] | None
    step_path: KeyPath | None
    """For a schedule, the state counter it is evaluated at."""

    @property
    def path(self) -> KeyPath:
        """Where it stands in a description: a field of the transformation's state node."""
        return (*self.node_path, GetAttrKey(self.name))


class OptimizerReading(NamedTuple):
    constants: list[ConstantHyperparameter]
    unmatched: list[str]
    """One line for each part of the optimizer that could not be matched with the state."""


def read_optimizer(optimizer: Any, state: Any) -> OptimizerReading:
    """The constant and scheduled hyperparameters `optimizer` holds, matched with `state`."""
    reading = OptimizerReading([], [])
    _walk(optimizer, state, (), reading)
    return reading


def _cells(function: Any) -> dict[str, Any]:
    closure = getattr(function, "__closure__", None) or ()
    names = getattr(getattr(function, "__code__", None), "co_freevars", ())
    values = {}
    for name, cell in zip(names, closure, strict=True):
        with contextlib.suppress(ValueError):  # an empty cell
            values[name] = cell.cell_contents
    return values


def _factory(function: Any) -> str:
    """The optax factory that made an update function: `chain` for `chain.<locals>.update_fn`."""
    return getattr(function, "__qualname__", "").split(".<locals>")[0]


def _where(path: KeyPath) -> str:
    return keystr(path) or "the root"


def _walk(optimizer: Any, state: Any, path: KeyPath, reading: OptimizerReading) -> None:
    inner_multi_steps = getattr(optimizer, "_opt", None)
    update = getattr(optimizer, "update", optimizer)
    owner = getattr(update, "__self__", None)
    if inner_multi_steps is not None or type(owner).__name__ == "MultiSteps":
        inner = inner_multi_steps if inner_multi_steps is not None else owner._opt  # type: ignore[union-attr]
        _descend(inner, state, path, GetAttrKey("inner_opt_state"), reading)
        return
    factory, cells = _factory(update), _cells(update)
    if factory == "chain":
        init_fns = _cells(getattr(optimizer, "init", None)).get("init_fns", ())
        _walk_sequence(init_fns, cells["update_fns"], state, path, reading)
    elif factory == "with_extra_args_support":
        _walk(cells["tx"], state, path, reading)
    elif factory == "named_chain":
        if not isinstance(state, dict) or [n for n, _ in cells["transforms"]] != list(state):
            reading.unmatched.append(f"named_chain at {_where(path)}: the state is not keyed by its names")
            return
        for name, transform in cells["transforms"]:
            _walk(transform, state[name], (*path, DictKey(name)), reading)
    elif factory == "partition":
        inner_states = getattr(state, "inner_states", None)
        if not isinstance(inner_states, dict) or set(inner_states) != set(cells["transforms"]):
            reading.unmatched.append(f"partition at {_where(path)}: the state has other labels")
            return
        for label, transform in cells["transforms"].items():
            label_path = (*path, GetAttrKey("inner_states"), DictKey(label))
            _descend(transform, inner_states[label], label_path, GetAttrKey("inner_state"), reading)
    elif factory in _WRAPPERS:
        _descend(cells[_WRAPPERS[factory][0]], state, path, GetAttrKey(_WRAPPERS[factory][1]), reading)
    elif factory.startswith("inject_hyperparams") or factory.startswith("inject_stateful_hyperparams"):
        return  # its hyperparameters are in the state
    elif getattr(update, "__module__", "").startswith("optax."):
        if _state_matches(optimizer, factory, state, path, reading):
            _read_leaf(factory, cells, state, path, reading)
    else:
        qualname = getattr(update, "__qualname__", type(optimizer).__name__).replace(".<locals>", "")
        name = ".".join(qualname.split(".")[-2:])  # "custom.update_fn", not the whole nesting
        reading.unmatched.append(f"{name} at {_where(path)}: not an optax transformation")


_WRAPPERS = {
    "masked": ("inner", "inner_state"),
    "apply_if_finite": ("inner", "inner_state"),
    "conditionally_mask": ("inner", "inner_state"),
    "conditionally_transform": ("inner", "inner_state"),
    "lookahead": ("fast_optimizer", "fast_state"),
}
"""Wrappers of one inner transformation: the closure variable that holds it, the state field."""


def _descend(optimizer: Any, state: Any, path: KeyPath, key: GetAttrKey, reading: OptimizerReading) -> None:
    inner = child_at(state, key) if is_namedtuple(state) else _MISSING
    if inner is _MISSING:
        reading.unmatched.append(f"{type(state).__name__} at {_where(path)} has no {key}")
        return
    _walk(optimizer, inner, (*path, key), reading)


def _walk_sequence(
    init_fns: tuple[Any, ...],
    update_fns: tuple[Any, ...],
    state: Any,
    path: KeyPath,
    reading: OptimizerReading,
) -> None:
    if type(state) is not tuple or len(state) != len(update_fns) or len(init_fns) != len(update_fns):
        size = len(state) if isinstance(state, tuple) else "no"
        reading.unmatched.append(
            f"chain of {len(update_fns)} at {_where(path)}: the state has {size} entries"
        )
        return
    for number, (init, update, inner) in enumerate(zip(init_fns, update_fns, state, strict=True)):
        _walk(optax.GradientTransformation(init, update), inner, (*path, SequenceKey(number)), reading)


@functools.lru_cache(maxsize=1024)
def _state_type(init: Callable[[Any], Any]) -> type | None:
    """The type of state `init` builds (from empty params), or None if that cannot be told."""
    try:
        return type(jax.eval_shape(init, {}))
    except Exception:  # any failure means "cannot check", which the caller reports
        return None


def _state_matches(
    optimizer: Any, factory: str, state: Any, path: KeyPath, reading: OptimizerReading
) -> bool:
    """Whether the state node at `path` is the kind of state `optimizer` builds: never guess."""
    init = getattr(optimizer, "init", None)
    expected = _state_type(init) if init is not None else None
    if expected is None:
        reading.unmatched.append(f"{factory} at {_where(path)}: its state could not be checked")
        return False
    if expected is not type(state):
        found, built = type(state).__name__, expected.__name__
        reading.unmatched.append(f"{factory} at {_where(path)}: it builds a {built}, the state has a {found}")
        return False
    return True


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Number):
        return True
    return (
        isinstance(value, jax.Array | np.ndarray)
        and value.ndim == 0
        and not isinstance(value, jax.core.Tracer)
    )


def _read_leaf(
    factory: str, cells: dict[str, Any], state: Any, path: KeyPath, reading: OptimizerReading
) -> None:
    found = reading.constants
    if factory == "scale" and _is_number(cells.get("step_size")):
        # optax builds a constant learning rate as scale(-learning_rate), or scale(learning_rate)
        # with flip_sign=False; scale(-1) is a sign flip, not a hyperparameter.
        if abs(cells["step_size"]) != 1:
            found.append(ConstantHyperparameter(path, "learning_rate", abs(cells["step_size"]), None, None))
        return
    if factory == "scale_by_schedule":
        function = cells["step_size_fn"]
        inner = _cells(function)
        count = getattr(state, "count", None)
        if _factory(function) == "scale_by_learning_rate" and callable(inner.get("learning_rate")):
            name, schedule = "learning_rate", inner["learning_rate"]
        else:
            name, schedule = "step_size", function
        value = None if count is None or isinstance(count, jax.core.Tracer) else schedule(count)
        found.append(ConstantHyperparameter(path, name, value, schedule, (*path, GetAttrKey("count"))))
        return
    for name, value in sorted(cells.items()):
        if _is_number(value):
            found.append(ConstantHyperparameter(path, _RENAMED.get((factory, name), name), value, None, None))


_RENAMED = {("trace", "decay"): "momentum"}
"""Closure names that differ from the name the user gave: `sgd(momentum=...)` is `trace(decay=...)`."""
