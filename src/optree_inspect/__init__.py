"""optree_inspect: find, read, change and describe what is inside an optax optimizer state."""

from jax.tree_util import keystr as keystr

from . import _optax as _optax  # first: registers optax's state rules before any index is built
from ._cache import clear_caches as clear_caches
from ._check import Finding as Finding
from ._check import Report as Report
from ._check import check as check
from ._check import stats as stats
from ._checkpoint import load as load
from ._describe import Description as Description
from ._describe import Row as Row
from ._describe import describe as describe
from ._diff import Diff as Diff
from ._diff import DiffRow as DiffRow
from ._diff import diff as diff
from ._edit import set as set
from ._errors import AmbiguousMatchError as AmbiguousMatchError
from ._errors import CheckpointError as CheckpointError
from ._errors import ConstantHyperparameterError as ConstantHyperparameterError
from ._errors import DeletedArrayError as DeletedArrayError
from ._errors import EditConflictError as EditConflictError
from ._errors import Error as Error
from ._errors import InvalidArgumentError as InvalidArgumentError
from ._errors import LeafTypeError as LeafTypeError
from ._errors import MigrationError as MigrationError
from ._errors import NoMatchError as NoMatchError
from ._errors import OptimizerMismatchError as OptimizerMismatchError
from ._errors import QueryError as QueryError
from ._errors import QuerySyntaxError as QuerySyntaxError
from ._errors import RestoreMismatchError as RestoreMismatchError
from ._errors import ScheduledHyperparameterError as ScheduledHyperparameterError
from ._errors import StructureError as StructureError
from ._errors import TreeError as TreeError
from ._errors import TreeTooDeepError as TreeTooDeepError
from ._first_bad import FirstBad as FirstBad
from ._first_bad import StepRead as StepRead
from ._first_bad import first_bad as first_bad
from ._listing import print_once as print_once
from ._memory import Memory as Memory
from ._memory import MemoryRow as MemoryRow
from ._memory import Usage as Usage
from ._memory import memory as memory
from ._metrics import metrics as metrics
from ._migrate import Migration as Migration
from ._migrate import MigrationRow as MigrationRow
from ._migrate import migrate as migrate
from ._optax.closures import Optimizer as Optimizer
from ._optax.hyperparams import hyperparams as hyperparams
from ._placement import SavedStruct as SavedStruct
from ._query import Query as Query
from ._resolve import Match as Match
from ._resolve import find as find
from ._resolve import get as get
from ._restore import restore_like as restore_like

__all__ = [
    "AmbiguousMatchError",
    "CheckpointError",
    "ConstantHyperparameterError",
    "DeletedArrayError",
    "Description",
    "Diff",
    "DiffRow",
    "EditConflictError",
    "Error",
    "Finding",
    "FirstBad",
    "InvalidArgumentError",
    "LeafTypeError",
    "Match",
    "Memory",
    "MemoryRow",
    "Migration",
    "MigrationError",
    "MigrationRow",
    "NoMatchError",
    "Optimizer",
    "OptimizerMismatchError",
    "Query",
    "QueryError",
    "QuerySyntaxError",
    "Report",
    "RestoreMismatchError",
    "Row",
    "SavedStruct",
    "ScheduledHyperparameterError",
    "StepRead",
    "StructureError",
    "TreeError",
    "TreeTooDeepError",
    "Usage",
    "check",
    "clear_caches",
    "describe",
    "diff",
    "find",
    "first_bad",
    "get",
    "hyperparams",
    "keystr",
    "load",
    "memory",
    "metrics",
    "migrate",
    "print_once",
    "restore_like",
    "set",
    "stats",
]
