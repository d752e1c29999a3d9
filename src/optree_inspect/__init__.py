"""optree_inspect: find, read, change and describe what is inside an optax optimizer state."""

from jax.tree_util import keystr as keystr

from ._describe import Description as Description
from ._describe import Row as Row
from ._describe import describe as describe
from ._describe import hyperparams as hyperparams
from ._edit import set as set
from ._errors import AmbiguousMatchError as AmbiguousMatchError
from ._errors import ConstantHyperparameterError as ConstantHyperparameterError
from ._errors import NoMatchError as NoMatchError
from ._errors import QueryError as QueryError
from ._errors import QuerySyntaxError as QuerySyntaxError
from ._errors import ScheduledHyperparameterError as ScheduledHyperparameterError
from ._resolve import Match as Match
from ._resolve import find as find
from ._resolve import get as get

__all__ = [
    "AmbiguousMatchError",
    "ConstantHyperparameterError",
    "Description",
    "Match",
    "NoMatchError",
    "QueryError",
    "QuerySyntaxError",
    "Row",
    "ScheduledHyperparameterError",
    "describe",
    "find",
    "get",
    "hyperparams",
    "keystr",
    "set",
]
