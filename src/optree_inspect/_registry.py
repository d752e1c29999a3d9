"""What JAX's registry says about one node: its keyed children and aux data, and whether its keys and
aux data let an index of it be cached under its treedef (see `_cache.index_and_leaves`)."""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import sys
import types
from typing import Any

import jax
import numpy as np
from jax.tree_util import DictKey, GetAttrKey

from ._compat import is_nnx_variable_type
from ._errors import TreeError, bounded
from ._keys import KeyEntry

REGISTRY = jax.tree_util.default_registry
DICT_TYPES = (dict, collections.OrderedDict, collections.defaultdict)
CONTAINER_TYPE_NAMES = frozenset({"tuple", "list", "dict", "OrderedDict", "defaultdict", "NoneType"})
"""JAX's own pytree containers: their type names say nothing a query could use."""


def is_namedtuple(node: object) -> bool:
    """Whether JAX flattens `node` as a NamedTuple: a tuple subclass with a `_fields` attribute,
    which JAX asks of the instance (an instance may have one that its type lacks)."""
    if not isinstance(node, tuple) or type(node) is tuple:
        return False
    try:
        return hasattr(node, "_fields")
    except Exception:  # a `__getattr__` that raises: JAX's check takes it for no `_fields`
        return False


def is_namedtuple_type(kind: type) -> bool:
    return issubclass(kind, tuple) and hasattr(kind, "_fields")


def _is_jax_container(kind: type) -> bool:
    """JAX's own containers: dicts, lists, tuples and NamedTuples (their aux data is keys or a type)."""
    return kind in DICT_TYPES or kind is tuple or kind is list or is_namedtuple_type(kind)


def children_with_keys(node: Any) -> list[tuple[KeyEntry, Any]] | None:
    """The `(key, child)` pairs of `node` in flatten order, or `None` for a leaf.

    >>> children_with_keys({"b": 1, "a": 2})
    [(DictKey(key='a'), 2), (DictKey(key='b'), 1)]
    """
    flat = flatten_one_level(node)
    return None if flat is None else flat[0]


def flatten_one_level(node: Any) -> tuple[list[tuple[KeyEntry, Any]], Any] | None:
    """The `(key, child)` pairs and the aux data of `node`, or `None` for a leaf."""
    try:
        flat = REGISTRY.flatten_one_level_with_keys(node)
    except (ValueError, TypeError) as error:
        raise tree_error(node, error) from None
    if flat is None:
        return None
    pairs = list(flat[0])
    if is_namedtuple(node) and len(pairs) > 1 and pairs[0][0] == pairs[1][0]:
        # jax 0.10.2 gives every NamedTuple child the first field's key (jax issue 39297).
        pairs = [(GetAttrKey(name), child) for name, (_, child) in zip(node._fields, pairs, strict=True)]
    return pairs, flat[1]


def keys_follow_structure(kind: type, keys: list[KeyEntry], aux: Any) -> bool:
    """Whether the `keys` of a node of type `kind` with `aux` data are fixed by its treedef (its
    type and aux data).

    True for JAX's built-in containers and NamedTuples, for dataclass-based nodes keyed by their
    fields (`register_dataclass`, `flax.struct`, `eqx.Module`), for nnx Variables and for mapping
    nodes that keep their keys in their aux data (`nnx.State`). Any other custom node could in
    principle derive keys from something the treedef does not see.
    """
    if _is_jax_container(kind) or kind is type(None):
        return True
    if dataclasses.is_dataclass(kind):
        names = _field_names(kind)
        return all(isinstance(k, GetAttrKey) and k.name in names for k in keys)
    if is_nnx_variable_type(kind):
        return True
    if all(isinstance(k, DictKey) for k in keys):
        return isinstance(aux, tuple) and list(aux) == [k.key for k in keys]
    return False


def cacheable_node(kind: type, keys: list[KeyEntry], aux: Any) -> bool:
    """Whether an index holding a node of type `kind`, with `keys` and `aux` data, may be cached
    under its treedef (see `_cache.index_and_leaves`)."""
    if not keys_follow_structure(kind, keys, aux):
        return False
    if any(isinstance(k, DictKey) and type(k.key) is not str for k in keys):
        return False
    # A defaultdict's aux data holds its default_factory, which may close over anything.
    return (_is_jax_container(kind) and kind is not collections.defaultdict) or aux_is_inert(aux)


@functools.cache
def _field_names(kind: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(kind))


def tree_error(node: Any, error: Exception) -> TreeError:
    return TreeError(
        f"JAX cannot flatten a {bounded(type(node).__name__, 60)} in this tree: "
        f"{bounded(str(error), 200)} (a dict's keys must be sortable, such as all str or all int)."
    )


_INERT_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_FRAMEWORKS = frozenset({"equinox", "flax"})
"""Packages whose flatten functions put records of their own into aux data (equinox's flattened
module data): such a record is inert when what it holds is."""
_MODULE_LEVEL: dict[int, Any] = {}
"""Objects found to be attributes of their type's module, by id (a module keeps them alive)."""


def aux_is_inert(aux: Any, depth: int = 0) -> bool:
    """Whether `aux` holds only values whose lifetime no tree controls: literals, types, enum
    members, and functions, classes or objects (sentinels) defined at module level. Any other
    object (a user's config in a static field, a closure) is not: a cache holding it would keep it
    alive."""
    kind = type(aux)
    if kind in _INERT_SCALARS or isinstance(aux, type) or aux is dataclasses.MISSING:
        return True
    if isinstance(aux, np.generic) and kind is not np.object_:
        return True  # NumPy scalars hold no references
    if depth > 8:
        return False
    if kind in (tuple, list, frozenset) or (is_namedtuple_type(kind) and not hasattr(aux, "__dict__")):
        return all(aux_is_inert(item, depth + 1) for item in aux)
    if kind is dict:
        return all(aux_is_inert(k, depth + 1) and aux_is_inert(v, depth + 1) for k, v in aux.items())
    if isinstance(aux, enum.Enum):
        return _is_module_level(kind)
    if _is_module_level(aux) or _is_module_attribute(aux):
        return True
    if isinstance(aux, types.GenericAlias | types.UnionType) or kind.__module__ in (
        "typing",
        "typing_extensions",
    ):
        return True  # annotations: they hold types and literals
    if kind.__module__.split(".")[0] in _FRAMEWORKS and not _is_user_subclass(kind):
        attributes = _own_attributes(aux)
        return attributes is not None and all(aux_is_inert(value, depth + 1) for value in attributes)
    return False


def _is_user_subclass(kind: type) -> bool:
    """Whether `kind` or a base between it and the framework's own class was defined elsewhere."""
    return any(k.__module__.split(".")[0] not in _FRAMEWORKS | {"builtins"} for k in kind.__mro__)


def _own_attributes(value: Any) -> list[Any] | None:
    """The values an object holds in its `__dict__` and slots (equinox's flattened aux data is such
    a record), or None for an object of a builtin or C type that may hold anything."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return None
    found = list(getattr(value, "__dict__", {}).values())
    for klass in kind.__mro__:
        slots = getattr(klass, "__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                found.append(getattr(value, name))
    return found


def _is_module_attribute(value: Any) -> bool:
    """An object bound to a name in the module that defines its type (a sentinel such as
    equinox's `MISSING`): the module keeps it alive anyway."""
    if id(value) in _MODULE_LEVEL and _MODULE_LEVEL[id(value)] is value:
        return True
    module = sys.modules.get(type(value).__module__)
    if module is None or not any(found is value for found in vars(module).values()):
        return False
    _MODULE_LEVEL[id(value)] = value
    return True


def _is_module_level(value: Any) -> bool:
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    qualname = getattr(value, "__qualname__", None)
    if module is None or not isinstance(qualname, str) or "<locals>" in qualname:
        return False
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is value
