"""The hypothesis profiles (registered by tests/conftest.py): `dev`, the default, runs a
tenth of each property test's examples (at least 5), and exhaustive checks a tenth of
their packet pools, so that `make test-unit` takes seconds; `ci` (HYPOTHESIS_PROFILE=ci,
what `make test` and .ci/run use) runs every test's full count and every packet. Property
tests write their count as `max_examples=examples(N)`, pools as `share(pool)`."""
from __future__ import annotations

import os
from typing import TypeVar

from hypothesis import settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
DEV_SHARE = 10
T = TypeVar("T")


def examples(n: int) -> int:
    """A property test's example count under the active profile (N under `ci`)."""
    return n if PROFILE == "ci" else max(5, n // DEV_SHARE)


def share(pool: list[T]) -> list[T]:
    """An exhaustive check's pool under the active profile (all of it under `ci`)."""
    return pool if PROFILE == "ci" else pool[::DEV_SHARE]


def load_profiles() -> None:
    settings.register_profile("dev", max_examples=examples(100), deadline=None)
    settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True)
    settings.load_profile(PROFILE)
