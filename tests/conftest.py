"""Shared test set-up: fake CPU devices for sharding tests, and the offline data folder."""

from __future__ import annotations

import os
from pathlib import Path

# Four fake CPU devices so sharding tests can build a ('data',) mesh; must precede jax's start.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# super_resolve / evaluate turn on JAX's persistent compilation cache under ~/.cache by default;
# tests keep it off (tests/inference_test.py turns it on in a temporary folder).
os.environ.setdefault("LFCSR_XLA_CACHE", "off")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI and developers have it; a user's fresh clone does not).
SHARED_DATA = Path(os.environ.get("LFCSR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline test data folder; skips the test with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"offline test data not found at {SHARED_DATA} (the ../shared folder beside the "
            "checkout; set LFCSR_SHARED_DATA to point elsewhere)"
        )
    return SHARED_DATA
