"""Test-wide settings: hypothesis profiles and the tiers' markers."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# `ci`: a fixed budget and a fixed seed, so a CI run is repeatable and bounded in time.
settings.register_profile(
    "ci",
    max_examples=250,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
# `dev`: quicker, random seeds, for the edit-test loop.
settings.register_profile("dev", max_examples=60, deadline=None)
# `thorough`: for a long local hunt.
settings.register_profile("thorough", max_examples=5000, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev")
)
