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


# The training subprocesses of one pytest run share a persistent XLA compilation cache
# (tests/train_test.py: _env): the workers of a pytest-xdist run share the parent of their
# base temp folders, so the cache lives there and goes with pytest's own temp-folder cleanup.
TRAINING_XLA_CACHE_ENV = "LFCSR_TEST_TRAINING_XLA_CACHE"


@pytest.fixture(scope="session", autouse=True)
def _training_compile_cache(tmp_path_factory) -> None:
    if TRAINING_XLA_CACHE_ENV not in os.environ:
        base = tmp_path_factory.getbasetemp()
        shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
        os.environ[TRAINING_XLA_CACHE_ENV] = str(shared / "training-xla-cache")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline test data folder; skips the test with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"offline test data not found at {SHARED_DATA} (the ../shared folder beside the "
            "checkout; set LFCSR_SHARED_DATA to point elsewhere)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def gcs_emulator():
    """A local GCS emulator with every client of this process (and its children) pointed at it;
    skips with the reason when the emulator package (the `test` extra) is not installed."""
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed "
                        "(pip install -e '.[test]')")
    from tests.gcs_emulator import Emulator, client_environment

    emulator = Emulator()
    saved = {k: os.environ.get(k) for k in client_environment(emulator.endpoint)}
    os.environ.update(client_environment(emulator.endpoint))
    yield emulator
    emulator.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def gcs_root(gcs_emulator, request) -> str:
    """A fresh gs:// prefix for one test in the emulator's bucket."""
    import uuid

    from tests.gcs_emulator import BUCKET

    return f"gs://{BUCKET}/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
