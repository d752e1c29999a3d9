"""Hyperparameters an optax optimizer keeps in its closures rather than in its state.

`optax.adamw(schedule, weight_decay=1e-4)` keeps `b1`, `eps`, `weight_decay` and the schedule in
the closures of its update functions; the state holds only the schedule's counter. `read_optimizer`
walks the optimizer in step with the state (chain positions, named_chain names, partition labels,
wrapper fields) and attaches each value to the state node of the transformation that holds it.

This reads optax's closure layout (optax 0.2.8): which free variable of which update function holds
what. A transformation it does not know is reported, never guessed at; a state that contradicts the
optimizer (another optimizer's state) is refused with `OptimizerMismatchError`.

Names: a closure value is read under the name optax's transformation gives it (`b1`, `eps`,
`weight_decay`, `max_norm`), except the learning rate, which optax folds into `scale(-learning_rate)`
or `scale_by_schedule(lambda count: -learning_rate(count))`. A schedule made by
`scale_by_learning_rate` is read as `learning_rate` from its own closure. A constant `scale` is read
as `learning_rate` only where a chain has the layout of optax's aliases (`chain_roles`), with the
sign those use; any other `scale` is read as `step_size`, its exact factor.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

import jax
import numpy as np
import optax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from .._cache import structure_index
from .._errors import DeletedArrayError, InvalidArgumentError, OptimizerMismatchError, bounded
from .._keys import KeyEntry, KeyPath, path_text
from .._leaf import is_deleted, value_of
from .._paths import _MISSING, child_at, value_at
from .._registry import is_namedtuple
from .fields import MAY_BE_LEFT_OUT, field_key, field_of, position_of

Optimizer: TypeAlias = optax.GradientTransformation | optax.MultiSteps
"""What `optimizer=` takes: the optax optimizer that made the state."""


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
    """The constant and scheduled hyperparameters `optimizer` holds, matched with `state`.

    Raises `OptimizerMismatchError` where the state contradicts the optimizer: nothing is read
    from an optimizer that is not the state's.
    """
    if isinstance(optimizer, Mapping) or not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise InvalidArgumentError(
            "optimizer= takes the optax GradientTransformation that made the state (such as "
            f"optax.adamw(1e-3)), got a {bounded(type(optimizer).__name__, 60)}."
        )
    reading = OptimizerReading([], [])
    try:
        _walk(optimizer, state, (), reading, None)
    except OptimizerMismatchError as at_root:
        return _read_inside(optimizer, state, at_root)
    return reading


def _read_inside(optimizer: Any, tree: Any, at_root: OptimizerMismatchError) -> OptimizerReading:
    """The reading of the one node of `tree` that is this optimizer's state, for a container that
    holds it (a flax `TrainState`, an eqx Module or flax struct, an `nnx.Optimizer`)."""
    expected = _state_type(optimizer.init)
    index = structure_index(tree)
    found: list[OptimizerReading] = []
    paths: list[KeyPath] = []
    restored = index.by_state_name.get(expected.__name__, []) if expected is not None else []
    # A chain's state may also be a list (restored) or a dict of positions (`nnx.state`): any
    # container that holds a state may be one.
    holds_state = index.holds_state if expected is tuple else None
    mapping = expected is not None and issubclass(expected, Mapping)  # named_chain's, a dict to nnx
    for node in range(1, len(index)) if expected is not None else ():
        chain_like = holds_state is not None and holds_state[node] and index.state_names[node] is None
        kind = index.types[node]
        same_kind = kind is expected or (mapping and issubclass(kind, Mapping))
        if not same_kind and node not in restored and not chain_like:
            continue
        path = index.path(node)
        reading = OptimizerReading([], [])
        try:
            _walk(optimizer, value_at(tree, path), path, reading, None)
        except OptimizerMismatchError:
            continue
        found.append(reading)
        paths.append(path)
    if len(found) == 1:
        return found[0]
    if found:
        where = ", ".join(path_text(p) for p in paths[:4])
        raise OptimizerMismatchError(
            f"This tree holds {len(found)} states this optimizer could have made ({where}): pass the "
            "one you mean as the tree, such as oi.get(train_state.opt_state, ..., optimizer=tx)."
        )
    raise OptimizerMismatchError(
        f"{str(at_root).split(' Pass the')[0]} Nor does any node inside the tree: the optimizer's "
        "state was not found in it. Pass the optimizer that made the state, or the state itself "
        "(such as train_state.opt_state)."
    )


def _a(name: str) -> str:
    return f"{'an' if name[:1] in tuple('AEIOUaeiou') else 'a'} {bounded(name, 60)}"


def _mismatch(what: str, path: KeyPath) -> OptimizerMismatchError:
    return OptimizerMismatchError(
        f"The optimizer does not match this state: {bounded(what, 300)} at {_where(path)}. Pass the "
        "optimizer that made the state (nothing was read from this one)."
    )


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
    return "the root" if not path else path_text(path)


class _Visit(NamedTuple):
    """One transformation of the optimizer, in step with its part of the state."""

    optimizer: Any
    update: Any
    cells: dict[str, Any]
    state: Any
    path: KeyPath
    reading: OptimizerReading
    role: str | None


def _walk(optimizer: Any, state: Any, path: KeyPath, reading: OptimizerReading, role: str | None) -> None:
    inner_multi_steps = getattr(optimizer, "_opt", None)
    update = getattr(optimizer, "update", optimizer)
    owner = getattr(update, "__self__", None)
    if inner_multi_steps is not None or type(owner).__name__ == "MultiSteps":
        inner = inner_multi_steps if inner_multi_steps is not None else owner._opt  # type: ignore[union-attr]
        _descend(inner, state, path, "inner_opt_state", reading)
        return
    factory = _factory(update)
    visit = _Visit(optimizer, update, _cells(update), state, path, reading, role)
    if factory in CONTAINERS:
        CONTAINERS[factory](visit)
    elif factory in WRAPPERS:
        inner_name, field = WRAPPERS[factory]
        _descend(visit.cells[inner_name], state, path, field, reading)
    elif factory.startswith(("inject_hyperparams", "inject_stateful_hyperparams")):
        return  # its hyperparameters are in the state
    elif getattr(update, "__module__", "").startswith("optax."):
        if role is None and factory == "scale" and _is_sign_flip(visit.cells.get("step_size")):
            return  # a user's own `scale(-1)`, as optax's aliases end: no hyperparameter
        if _state_matches(optimizer, factory, state, path, reading):
            _read_leaf(factory, visit.cells, state, path, reading, role)
    else:
        qualname = getattr(update, "__qualname__", type(optimizer).__name__).replace(".<locals>", "")
        name = ".".join(qualname.split(".")[-2:])  # "custom.update_fn", not the whole nesting
        reading.unmatched.append(f"{name} at {_where(path)}: not an optax transformation")


def _chain(visit: _Visit) -> None:
    init_fns = _cells(getattr(visit.optimizer, "init", None)).get("init_fns", ())
    _walk_sequence(init_fns, visit.cells["update_fns"], visit.state, visit.path, visit.reading)


def _extra_args(visit: _Visit) -> None:
    _walk(visit.cells["tx"], visit.state, visit.path, visit.reading, visit.role)


def _named_chain(visit: _Visit) -> None:
    names = [n for n, _ in visit.cells["transforms"]]
    state = {} if visit.state is None else visit.state  # `nnx.state` leaves out an empty one
    if not isinstance(state, Mapping) or not _keyed_by(state, visit.cells["transforms"]):
        raise _mismatch(f"named_chain of {names[:8]}, the state is not keyed by these names", visit.path)
    for name, transform in visit.cells["transforms"]:
        inner_path = visit.path if name not in state else (*visit.path, DictKey(name))
        _walk(transform, state.get(name), inner_path, visit.reading, None)


def _partition(visit: _Visit) -> None:
    transforms = visit.cells["transforms"]
    inner_states = field_of(visit.state, "inner_states") if _is_state(visit.state) else None
    if inner_states is None and _is_state(visit.state):
        inner_states = {}  # every group's state empty: `nnx.state` left the field out
    if not isinstance(inner_states, Mapping) or not _keyed_by(inner_states, transforms.items()):
        raise _mismatch(f"partition of labels {sorted(map(str, transforms))[:8]}", visit.path)
    for label, transform in transforms.items():
        if label not in inner_states:  # an empty group's state, left out by `nnx.state`
            _walk(transform, None, visit.path, visit.reading, None)
            continue
        label_path = (*visit.path, field_key(visit.state, "inner_states"), DictKey(label))
        _descend(transform, inner_states[label], label_path, "inner_state", visit.reading)


def _keyed_by(state: Mapping[Any, Any], transforms: Any) -> bool:
    """Whether `state` holds a state for each of the named `transforms` (`(name, transform)`
    pairs), but those whose state is empty may be missing (`nnx.state` leaves them out)."""
    named = dict(transforms)
    return set(state) <= set(named) and all(
        name in state or not _builds_leaves(getattr(transform, "init", None))
        for name, transform in named.items()
    )


def _schedule_free(visit: _Visit) -> None:
    """`contrib.schedule_free`: its own values at its state node (`learning_rate` as it uses it at
    the next update, `weight_lr_power`; its `b1` is in the state), the base optimizer's in step
    with `base_optimizer_state`.

    >>> tx = optax.contrib.schedule_free_sgd(0.5, weight_decay=1e-4)
    >>> [c.name for c in read_optimizer(tx, tx.init({"w": np.zeros(2)})).constants]
    ['learning_rate', 'weight_lr_power', 'weight_decay', 'learning_rate']
    """
    state, path, reading = visit.state, visit.path, visit.reading
    if not _state_matches(visit.optimizer, "schedule_free", state, path, reading):
        return
    _read_leaf("schedule_free", visit.cells, state, path, reading, None)
    base = visit.cells.get("base_optimizer")
    if base is None:
        reading.unmatched.append(f"schedule_free at {_where(path)}: its base optimizer was not found")
        return
    constants, unmatched = len(reading.constants), len(reading.unmatched)
    _descend(base, state, path, "base_optimizer_state", reading)
    _name_unmatched(reading, unmatched, "schedule_free's base optimizer")
    if _is_adamw_base(base):
        reading.constants[constants:] = map(_as_adamw, reading.constants[constants:])


def _is_adamw_base(base: Any) -> bool:
    """Whether `base` is the chain `schedule_free_adamw` builds: `scale_by_rms`,
    `add_decayed_weights`, `scale_by_learning_rate`."""
    update = getattr(base, "update", None)
    while _factory(update) == "with_extra_args_support":
        update = getattr(_cells(update).get("tx"), "update", None)
    if _factory(update) != "chain":
        return False
    layout = [_element_layout(element)[0] for element in _cells(update).get("update_fns", ())]
    return layout in (
        ["scale_by_rms", "add_decayed_weights", "scale"],
        ["scale_by_rms", "add_decayed_weights", "scale_by_schedule"],
    )


def _as_adamw(constant: ConstantHyperparameter) -> ConstantHyperparameter:
    """A value of schedule_free_adamw's base under the name schedule_free_adamw gives it: `b2` for
    `scale_by_rms`'s `decay` (its `scale(-learning_rate)` is an alias layout: `ALIAS_LAYOUTS`)."""
    return constant._replace(name="b2") if constant.name == "decay" else constant


def _schedule_free_rate(
    cells: dict[str, Any], state: Any, path: KeyPath, reading: OptimizerReading
) -> list[ConstantHyperparameter]:
    """schedule_free's `learning_rate` where it is a schedule: the value it uses at the next
    update, at the state's `step_count` in the dtype of its `max_lr`, as optax computes it. A
    number is read with the other numbers; anything else is unmatched."""
    rate = cells.get("learning_rate", _MISSING)
    if _is_number(rate):
        return []
    if not callable(rate):
        what = "was not found" if rate is _MISSING else "is neither a number nor a schedule"
        reading.unmatched.append(f"schedule_free at {_where(path)}: its learning_rate {what}")
        return []
    dtype = getattr(value_of(field_of(state, "max_lr")), "dtype", None)
    schedule = rate if dtype is None else _in_dtype(rate, dtype)
    step_path = (*path, field_key(state, "step_count"))
    value = _evaluate(schedule, field_of(state, "step_count"), step_path)
    return [ConstantHyperparameter(path, "learning_rate", value, schedule, step_path)]


def _in_dtype(schedule: Callable[[Any], Any], dtype: Any) -> Callable[[Any], Any]:
    """`schedule` with its values cast to `dtype`.

    >>> _in_dtype(lambda count: count / 2, np.float16)(3).dtype
    dtype('float16')
    """

    def cast(count: Any) -> Any:
        return jax.numpy.asarray(schedule(count), dtype=dtype)

    return cast


def _sam(visit: _Visit) -> None:
    """`contrib.sam`: its `sync_period` at its state node, its `optimizer` in step with `opt_state`
    and its `adv_optimizer` with `adv_state`.

    >>> tx = optax.contrib.sam(optax.sgd(0.1), optax.sgd(0.05))
    >>> [(path_text(c.path), c.value) for c in read_optimizer(tx, tx.init({})).constants]
    [('.sync_period', 2), ('.opt_state[1].learning_rate', 0.1), ('.adv_state[1].learning_rate', 0.05)]
    """
    state, path, reading = visit.state, visit.path, visit.reading
    if not _restored_dataclass(visit.optimizer, state) and not _state_matches(
        visit.optimizer, "sam", state, path, reading
    ):
        return
    _read_leaf("sam", visit.cells, state, path, reading, None)
    for name, field in (("optimizer", "opt_state"), ("adv_optimizer", "adv_state")):
        inner = visit.cells.get(name)
        if inner is None:
            reading.unmatched.append(f"sam's {name} at {_where(path)}: not found in its closures")
            continue
        unmatched = len(reading.unmatched)
        _walk(inner, field_of(state, field), (*path, _child_key(state, field)), reading, None)
        _name_unmatched(reading, unmatched, f"sam's {name}")


def _child_key(state: Any, field: str) -> KeyEntry:
    """The key JAX gives the field `field` of a state: an attribute even of a dataclass that is
    also a mapping (an older optax's chex `SAMState`), a key of a restored dict."""
    for key in (GetAttrKey(field), DictKey(field)):
        if child_at(state, key) is not _MISSING:
            return key
    return field_key(state, field)


def _restored_dataclass(optimizer: Any, state: Any) -> bool:
    """Whether `state` is a dict of the fields of the dataclass `optimizer` builds as its state
    (an older optax's `SAMState`, restored without its type)."""
    expected = _state_type(optimizer.init) if callable(getattr(optimizer, "init", None)) else None
    fields = getattr(expected, "__dataclass_fields__", None)
    return fields is not None and isinstance(state, Mapping) and set(state) == set(fields)


def _name_unmatched(reading: OptimizerReading, since: int, owner: str) -> None:
    """Says whose the unmatched lines from `since` on are: `sam's adv_optimizer: ...`."""
    reading.unmatched[since:] = [f"{owner}: {line}" for line in reading.unmatched[since:]]


CONTAINERS: dict[str, Callable[[_Visit], None]] = {
    "chain": _chain,
    "with_extra_args_support": _extra_args,
    "named_chain": _named_chain,
    "partition": _partition,
    "schedule_free": _schedule_free,
    "sam": _sam,
}
"""Transformations that hold several others, by the optax factory that makes them."""

WRAPPERS = {
    "masked": ("inner", "inner_state"),
    "apply_if_finite": ("inner", "inner_state"),
    "conditionally_mask": ("inner", "inner_state"),
    "conditionally_transform": ("inner", "inner_state"),
    "lookahead": ("fast_optimizer", "fast_state"),
}
"""Wrappers of one inner transformation: the closure variable that holds it, the state field. A new
optax wrapper of this kind is one entry here."""


def _is_state(state: Any) -> bool:
    """A typed state (a NamedTuple) or one restored without its type (a mapping of its fields: a
    dict, or the dict-like node of a library, such as flax's `FrozenDict` or `nnx.State`)."""
    return is_namedtuple(state) or isinstance(state, Mapping)


def _descend(optimizer: Any, state: Any, path: KeyPath, field: str, reading: OptimizerReading) -> None:
    if state is None and not _builds_leaves(getattr(optimizer, "init", None)):  # left out by `nnx.state`
        _walk(optimizer, None, path, reading, None)
        return
    key = field_key(state, field)
    inner = child_at(state, key) if _is_state(state) else _MISSING
    if (
        inner is _MISSING
        and isinstance(state, Mapping)
        and not _builds_leaves(getattr(optimizer, "init", None))
    ):
        _walk(optimizer, None, path, reading, None)  # an empty inner state, left out by `nnx.state`
        return
    if inner is _MISSING:
        raise _mismatch(
            f"the optimizer wraps a state with a .{field} field, the state is a {type(state).__name__}", path
        )
    _walk(optimizer, inner, (*path, key), reading, None)


def _walk_sequence(
    init_fns: tuple[Any, ...],
    update_fns: tuple[Any, ...],
    state: Any,
    path: KeyPath,
    reading: OptimizerReading,
) -> None:
    items = _chain_items(state, len(update_fns)) if len(init_fns) == len(update_fns) else None
    if items is None:
        sequence = type(state) in (tuple, list)
        found = f"a {type(state).__name__} of {len(state)}" if sequence else _a(type(state).__name__)
        raise _mismatch(f"a chain of {len(update_fns)} transformations, the state is {found}", path)
    roles = chain_roles([_element_layout(update) for update in update_fns])
    for number, (init, update) in enumerate(zip(init_fns, update_fns, strict=True)):
        element = optax.GradientTransformation(init, update)
        role = roles.get(number)
        if number not in items and _builds_leaves(init):
            raise _mismatch(f"a chain of {len(update_fns)} transformations, no state at {number}", path)
        # a dict of positions leaves out the empty states: such an element is read as one, its
        # constants attached to the chain's node
        key, inner = items.get(number, (None, None))
        where = path if key is None else (*path, key)
        if role == FOLDED:
            reading.unmatched.append(
                f"{_element_factory(update)} at {_where(where)}: fromage folds its "
                "learning rate into this value, which is not one of its hyperparameters"
            )
            continue
        if role == SIGN_FLIP:
            continue
        _walk(element, inner, where, reading, role)


def _chain_items(state: Any, length: int) -> dict[int, tuple[KeyEntry, Any]] | None:
    """The states of a chain of `length` by position, with their keys: a tuple's (a list's, restored
    without its types), or a mapping's keyed by position (`nnx.state` makes a chain's tuple a dict of
    int keys without its empty states, restored as str keys), or None for any other node."""
    if type(state) in (tuple, list):
        pairs = list(enumerate(state)) if len(state) == length else None
        return None if pairs is None else {n: (SequenceKey(n), child) for n, child in pairs}
    items: dict[int, tuple[KeyEntry, Any]] = {}
    if state is None:  # a chain of empty states, left out whole
        return items
    if not isinstance(state, Mapping) or not state:
        return None
    for key, child in state.items():
        position = position_of(key)
        if position is None or not 0 <= position < length or position in items:
            return None
        items[position] = (DictKey(key), child)
    return items


@functools.lru_cache(maxsize=1024)
def _builds_leaves(init: Callable[[Any], Any]) -> bool:
    """Whether `init` builds a state with leaves (from empty params): one `nnx.state` keeps."""
    try:
        return bool(jax.tree.leaves(jax.eval_shape(init, {})))
    except Exception:  # cannot tell: not left out on purpose
        return True


LEARNING_RATE, LEARNING_RATE_AS_GIVEN, SIGN_FLIP, FOLDED = "descent", "as given", "flip", "folded"
"""Roles of an element of an alias's chain: the learning rate (`scale(-learning_rate)`, or
`scale(learning_rate)` for adafactor's and cocob's `flip_sign=False`), optax's `scale(-1)` that turns
ascent into descent, or a value fromage computes from its learning rate."""

_STEP = "scale|scale_by_schedule"
_DECAY = "add_decayed_weights|masked(add_decayed_weights)"
_LR, _LR_AS_GIVEN, _FLIP = (
    f"{_STEP}={LEARNING_RATE}",
    f"{_STEP}={LEARNING_RATE_AS_GIVEN}",
    f"scale={SIGN_FLIP}",
)

ALIAS_LAYOUTS: tuple[tuple[str, ...], ...] = (
    ("identity|trace|add_noise", _LR),  # sgd, noisy_sgd, polyak_sgd's inner sgd
    ("differentially_private_aggregate", "identity|trace", _LR),  # dpsgd
    (
        "scale_by_adam|scale_by_adamax|scale_by_adopt|scale_by_amsgrad|scale_by_belief|scale_by_novograd"
        "|scale_by_optimistic_gradient|scale_by_radam|scale_by_rss|scale_by_sign|scale_by_sm3|scale_by_yogi",
        _LR,
    ),
    (
        "scale_by_adam|scale_by_acprop|scale_by_adamax|scale_by_adan|scale_by_ademamix|scale_by_galore"
        "|scale_by_lion|scale_by_simplified_ademamix|scale_by_sophia",
        _DECAY,
        _LR,
    ),
    ("scale_by_adam", _DECAY, "scale_by_trust_ratio", _LR),  # lamb
    ("scale_by_adam", "scale_by_optimistic_gradient", _FLIP),  # optimistic_adam: its rate is in alpha
    ("scale_by_adam", "scale_by_optimistic_gradient", _LR),  # optimistic_adam_v2
    ("ema", "scale_by_sign", _LR),  # signum
    ("identity", "scale_by_dog|scale_by_dowg", _LR),
    (_DECAY, "scale_by_adadelta", _LR),
    (_DECAY, _LR_AS_GIVEN, "scale_by_cocob"),
    ("masked(add_decayed_weights)", "masked(scale_by_trust_ratio)", _LR, "trace"),  # lars
    ("scale_by_rms|scale_by_stddev", _LR, "identity|trace"),  # rmsprop
    ("scale_by_rms", _DECAY, _LR),  # contrib.schedule_free_adamw's base optimizer
    ("scale_by_lbfgs", _FLIP, "identity|scale_by_zoom_linesearch|scale_by_backtracking_linesearch"),
    ("scale_by_lbfgs", _LR, "identity|scale_by_zoom_linesearch|scale_by_backtracking_linesearch"),
    ("scale_by_rprop", _FLIP),  # rprop: its rate sets the initial step sizes, in the state
    ("scale_by_muon", "scale_by_shape", _DECAY, _LR),
    (
        "scale_by_factored_rms",  # adafactor
        "clip_by_block_rms?",
        f"{_LR_AS_GIVEN}?",
        "scale_by_param_block_rms?",
        "ema?",
        f"{_DECAY}?",
        _FLIP,
    ),
    ("scale_by_trust_ratio", f"{_STEP}={FOLDED}", f"add_decayed_weights={FOLDED}"),  # fromage
)
"""The chains optax 0.2.8's aliases build around their learning rate, element by element (a
`masked` element by what it masks): `a|b` either, `?` optional, `=role` the element's role. A
constant `scale` is a learning rate only in one of these layouts; the first that fits wins."""


def _token(text: str) -> tuple[frozenset[str], str | None, bool]:
    optional = text.endswith("?")
    names, _, role = text.rstrip("?").partition("=")
    return frozenset(names.split("|")), role or None, optional


def chain_roles(elements: list[tuple[str, Any]]) -> dict[int, str]:
    """The roles of a chain's elements, each given as its layout (`_element_layout`) and, for a
    `scale`, its factor: those of the first alias layout it has, or none (its scales are then read
    as `step_size`). A sign flip is only ever a `scale(-1)`."""

    def fit(layout: tuple[str, ...], at: int) -> dict[int, str] | None:
        if not layout:
            return {} if at == len(elements) else None
        names, role, optional = _token(layout[0])
        if at < len(elements) and elements[at][0] in names:
            factor = elements[at][1]
            if role != SIGN_FLIP or (_is_number(factor) and factor == -1):
                rest = fit(layout[1:], at + 1)
                if rest is not None:
                    return rest if role is None else {at: role, **rest}
        return fit(layout[1:], at) if optional else None

    for layout in ALIAS_LAYOUTS:
        roles = fit(layout, 0)
        if roles is not None:
            return roles
    return {}


def _element_layout(update: Any) -> tuple[str, Any]:
    """A chain element as `chain_roles` reads it: its optax factory (a `masked` one with what it
    masks: `masked(add_decayed_weights)`) and, for a `scale`, its factor."""
    factory = _factory(update)
    while factory == "with_extra_args_support":
        update = getattr(_cells(update).get("tx"), "update", None)
        factory = _factory(update)
    if factory == "masked":
        inner = getattr(_cells(update).get("inner"), "update", None)
        return f"masked({_element_layout(inner)[0]})", None
    return factory, _cells(update).get("step_size") if factory == "scale" else None


def _element_factory(update: Any) -> str:
    """The optax factory of a chain element, through `with_extra_args_support`."""
    factory = _factory(update)
    while factory == "with_extra_args_support":
        update = getattr(_cells(update).get("tx"), "update", None)
        factory = _factory(update)
    return factory


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
    if not _made_as(expected, state):
        found, built = type(state).__name__, expected.__name__
        raise _mismatch(f"{factory} builds {_a(built)}, the state has {_a(found)}", path)
    return True


def _made_as(expected: type, state: Any) -> bool:
    """Whether `state` is of the state type `expected`, typed or restored without its type (a
    dict of its fields; `None` for `EmptyState`)."""
    if type(state) is expected:
        return True
    fields = getattr(expected, "_fields", None)
    if fields is None:
        return False
    if not fields:  # an empty state: None when restored, an empty mapping in praxis's NestedMaps
        return state is None or (isinstance(state, Mapping) and not state)
    if isinstance(state, Mapping):  # fields of empty states may be left out (`nnx.state`)
        return set(state) <= set(fields) and set(fields) - set(state) <= MAY_BE_LEFT_OUT
    # a NamedTuple of the user's own with optax's fields (a copy of `ScaleByAdamState`, say)
    return is_namedtuple(state) and set(state._fields) == set(fields)


def _is_sign_flip(factor: Any) -> bool:
    """Whether a `scale`'s factor is -1: a sign flip that turns ascent into descent."""
    return _is_number(factor) and bool(factor == -1)


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
    factory: str,
    cells: dict[str, Any],
    state: Any,
    path: KeyPath,
    reading: OptimizerReading,
    role: str | None,
) -> None:
    found: list[ConstantHyperparameter] = []
    if factory == "scale" and _is_number(cells.get("step_size")):
        step = cells["step_size"]
        if role == LEARNING_RATE:
            found.append(ConstantHyperparameter(path, "learning_rate", -step, None, None))
        elif role == LEARNING_RATE_AS_GIVEN:
            found.append(ConstantHyperparameter(path, "learning_rate", step, None, None))
        else:
            found.append(ConstantHyperparameter(path, "step_size", step, None, None))
    elif factory == "scale_by_schedule":
        function = cells["step_size_fn"]
        inner = _cells(function)
        if _factory(function) == "scale_by_learning_rate" and callable(inner.get("learning_rate")):
            name, schedule = "learning_rate", inner["learning_rate"]
            if _made_by_optax(schedule):  # a value an alias computes from its learning rate
                name, schedule = "step_size", function
        else:
            name, schedule = "step_size", function
        step_path = (*path, field_key(state, "count"))
        value = _evaluate(schedule, field_of(state, "count"), step_path)
        found.append(ConstantHyperparameter(path, name, value, schedule, step_path))
    else:
        if factory == "schedule_free":
            found.extend(_schedule_free_rate(cells, state, path, reading))
        for name, value in sorted(cells.items()):
            if _is_number(value):
                found.append(
                    ConstantHyperparameter(path, _RENAMED.get((factory, name), name), value, None, None)
                )
    # A value the state itself holds under the same name (schedule_free's b1) is read from the state.
    reading.constants.extend(c for c in found if child_at(state, field_key(state, c.name)) is _MISSING)


def _made_by_optax(function: Any) -> bool:
    """A function an optax alias (fromage) made from its learning rate: not the user's schedule."""
    qualname = getattr(function, "__qualname__", "")
    return getattr(function, "__module__", "") == "optax._src.alias" and "<locals>" in qualname


def _evaluate(schedule: Callable[[Any], Any], count: Any, path: KeyPath) -> Any:
    """The schedule's value at the state's counter: a tracer under `jit`, a `ShapeDtypeStruct` on an
    abstract state."""
    count = value_of(count)
    if isinstance(count, jax.ShapeDtypeStruct):
        return jax.eval_shape(schedule, count)
    if is_deleted(count):
        raise DeletedArrayError(
            f"The schedule's counter at {_where(path)} was deleted (donated to a jitted function?): "
            "the schedule's value cannot be computed. Use the state the jitted call returned."
        )
    return schedule(count)


_RENAMED = {("trace", "decay"): "momentum"}
"""Closure names that differ from the name the user gave: `sgd(momentum=...)` is `trace(decay=...)`."""
