import os
import sys

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

# `ci` is bounded and derandomized so that CI is fast and repeatable; `long` is for local bug hunts:
#   HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_properties.py
settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
# `quick` is for the floor and newest-version lanes of .ci/run: every test, fewer examples.
settings.register_profile(
    "quick", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
