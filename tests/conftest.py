"""Shared test set-up and helpers: fake CPU devices for sharding tests, the offline data folder,
the GCS emulator, a tiny random export, the training subprocess, the one-line error check."""

from __future__ import annotations

import os
import subprocess
import sys
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


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def fast_compiles():
    """XLA's optimisations off for a module (`pytestmark = pytest.mark.usefixtures(
    "fast_compiles")`): compile time dominates tiny forwards on a busy CPU."""
    import jax  # pylint: disable=import-outside-toplevel

    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


TINY_MODEL = {
    "scale": 4, "rgb_mean": [0.4488, 0.4371, 0.4040], "rgb_range": 255.0, "han_resgroups": 2,
    "han_resblocks": 1, "han_features": 8, "han_reduction": 4, "clique_blocks": 1,
    "clique_growth": 4, "clique_stem": 4, "dtype": "float32",
}


def make_tiny_export(directory):
    """A random tiny LFc-SR export (TINY_MODEL) in `directory`.

    Params are drawn in numpy on the shapes from jax.eval_shape: flax's init would compile the
    whole model once more (tens of seconds on a busy 2-core machine).
    """
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.models import generator  # pylint: disable=import-outside-toplevel
    from lfcsr_jax.weights import exports  # pylint: disable=import-outside-toplevel

    model = generator.build_lfcsr(TINY_MODEL)
    shapes = jax.eval_shape(lambda k: generator.init_params(model, k, (1, 8, 8, 3)),
                            jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    return exports.save_export(directory, params, TINY_MODEL)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, and the error is a single stderr line containing each needle."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def training_env(devices: int, compile_cache: bool = True) -> dict[str, str]:
    """The environment of a training subprocess. XLA's optimisations stay on: a tiny run
    measured 103 s with them and 116 s without on this 2-core machine (the ADMM step's execution
    gets slower by more than its compile gets faster). The runs share one persistent
    compilation cache per pytest session (conftest.py), which halves every repeated run
    (106 s -> 54 s measured); a test that needs a real compile passes compile_cache=False."""
    env = dict(os.environ)
    env.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
    cache = os.environ.get(TRAINING_XLA_CACHE_ENV)
    if compile_cache and cache:
        env.update({"JAX_COMPILATION_CACHE_DIR": cache,
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})
    return env


def main_command(workdir: Path, *overrides: str) -> list[str]:
    """`python -m lfcsr_jax.main` on the tiny config, as a user types it."""
    return [sys.executable, "-m", "lfcsr_jax.main", "--config=configs/x4.py:tiny",
            f"--workdir={workdir}", *overrides]


def run_main(workdir: Path, *overrides: str, devices: int = 4) -> subprocess.CompletedProcess:
    return subprocess.run(main_command(workdir, *overrides), cwd=REPO_ROOT,
                          env=training_env(devices), capture_output=True, text=True, timeout=900)


def flip_bytes(path) -> None:
    """Inverts 8 bytes a third of the way into a file (damage a checksum must catch)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def write_keras_legacy_h5(path, keras_layers: dict) -> None:
    """The layout of Keras's downloadable vgg19 ..._notop.h5 (layer groups, weight_names)."""
    import h5py  # pylint: disable=import-outside-toplevel

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in keras_layers]
        for name, (kernel, bias) in keras_layers.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            group[f"{name}/kernel:0"] = kernel
            group[f"{name}/bias:0"] = bias
