"""A library's states reach the core through rules it registers (`_state_rules`), never an edit of
the core: a toy library's state, typed or restored as a plain dict, is a state to patterns, `find`
and `describe`, with a hidden field, and stops being one when its rules are unregistered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp
import pytest

import optree_inspect as oi
from optree_inspect._keys import KeyEntry, field_name
from optree_inspect._state_rules import StateRules, is_state_node, register, unregister


class MyOptState(NamedTuple):
    """A toy optimizer's state: a counter, a trace shaped like the params, and a stash of the
    params that patterns enter only when they name it."""

    count: Any
    trace: Any
    stash: Any


FIELDS = frozenset(MyOptState._fields)


class MyRules(StateRules):
    hidden_fields = frozenset({"stash"})

    def state_name(self, kind: type) -> str | None:
        return "MyOptState" if kind is MyOptState else None

    def restored_names(self, node: dict[str, Any], place: int) -> tuple[str, ...] | None:
        return ("MyOptState",) if frozenset(node) == FIELDS else None

    def may_be_restored(self, keys: frozenset[str]) -> bool:
        return keys == FIELDS

    def hides(self, name: str, key: KeyEntry) -> bool:
        return name == "MyOptState" and field_name(key) == "stash"


def _state() -> dict[str, Any]:
    params = {"w": jnp.zeros(2), "b": jnp.zeros(1)}
    return {"opt": MyOptState(jnp.int32(3), params, params), "params": params}


def _restored() -> dict[str, Any]:
    """`_state()` as a checkpoint restored without its types gives it back."""
    params = {"w": jnp.zeros(2), "b": jnp.zeros(1)}
    return {"opt": {"count": jnp.int32(3), "trace": params, "stash": params}, "params": params}


def _found(tree: Any, query: Any) -> list[str]:
    return [oi.keystr(match.path) for match in oi.find(tree, query)]


@pytest.fixture
def my_rules() -> Iterator[MyRules]:
    # indexes cached under the rules before must not answer after they change
    assert _found(_state(), "MyOptState") == ["['opt']"]  # a type's name, state or not
    assert _found(_restored(), "MyOptState") == []
    for tree in (_state(), _restored()):
        assert len(_found(tree, "w")) == 3
    rules = MyRules()
    register(rules)
    try:
        yield rules
    finally:
        unregister(rules)


def test_a_registered_librarys_states_are_states(my_rules: MyRules) -> None:
    for tree, trace, stash, shown in [
        (_state(), "['opt'].trace", "['opt'].stash", "MyOptState"),
        (_restored(), "['opt']['trace']", "['opt']['stash']", "dict (MyOptState)"),
    ]:
        assert is_state_node(tree["opt"]) and not is_state_node(tree["params"])
        assert _found(tree, "MyOptState") == ["['opt']"]
        assert _found(tree, "w") == [f"{trace}['w']", "['params']['w']"]  # not the hidden stash
        assert _found(tree, "stash.w") == [f"{stash}['w']"]  # naming the hidden field enters it
        assert _found(tree, "MyOptState.*.w") == [f"{trace}['w']"]
        assert f"  opt: {shown}\n" in str(oi.describe(tree))


def test_unregistered_rules_leave_nothing_behind(my_rules: MyRules) -> None:
    restored = _restored()
    assert _found(restored, "MyOptState") == ["['opt']"]
    unregister(my_rules)
    assert _found(restored, "MyOptState") == []
    assert len(_found(restored, "w")) == 3
    assert not is_state_node(restored["opt"])
