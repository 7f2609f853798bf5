"""Shared by every tier (tests/unit, tests/component, tests/kernel).

* The helper modules in tests/ (cli_helpers, compile_sim, ...) are importable from every tier.
* One mark for tests that need root: `@pytest.mark.require_root` (or the `require_root`
  fixture) skips the test, with the reason, when not run as root; `kernel` implies it.
* Hypothesis profiles (tests/profiles.py): `dev`, the default, a tenth of each property
  test's examples; `ci` (HYPOTHESIS_PROFILE=ci: `make test`, .ci/run), the full counts; no
  deadline in either (the machine is shared and noisy). The longer fuzzing of `make fuzz`
  is the profile `secgroup-fuzz` in tests/unit/test_model_fuzz.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from profiles import load_profiles  # noqa: E402

load_profiles()

ROOT_REASON = "needs root (network namespaces, nftables)"


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"require_root: {ROOT_REASON}; skipped otherwise")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_root():
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if item.get_closest_marker("require_root") or item.get_closest_marker("kernel"):
            item.add_marker(skip)


@pytest.fixture
def require_root() -> None:
    """For a fixture that needs root before it builds anything."""
    if not is_root():
        pytest.skip(ROOT_REASON)
