"""Everything optax-specific: names, inject and schedule rules, closure reading, `hyperparams`.

A layer above the generic core: the core knows optax's states only through `fields.OPTAX_RULES`,
which importing this package registers (`_state_rules.register`). The verbs ask this package
through `names` (data), `states` (inject and schedule rules), `closures` (hyperparameters held by
an optimizer) and `hyperparams`. A new optax wrapper is one entry in `closures.WRAPPERS` (or
`CONTAINERS`) and one row in `tests/test_optimizer_constants.py`.
"""

from .._state_rules import register
from .fields import OPTAX_RULES

register(OPTAX_RULES)
