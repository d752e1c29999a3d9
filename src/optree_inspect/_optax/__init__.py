"""Everything optax-specific: names, inject and schedule rules, closure reading, `hyperparams`.

The core (keys, trees, queries, naming) asks this package through `names` (data), `states` (inject
and schedule rules), `closures` (hyperparameters held by an optimizer) and `hyperparams`. A new optax
wrapper is one entry in `closures.WRAPPERS` (or `CONTAINERS`) and one row in
`tests/test_optimizer_constants.py`.
"""
