"""lfcsr_jax/inference/: bucketed forwards equal exact shapes, compile counts, the persistent cache,
automatic tiling on a small memory budget, batching equals one image at a time."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import super_resolve
from lfcsr_jax.inference import memory
from lfcsr_jax.inference.memory import HOST_MEMORY_SHARE, memory_budget, parse_bytes
from lfcsr_jax.inference.model import LoadedModel, jitted_forwards, load_model
from lfcsr_jax.inference.settings import (BUCKET, InferenceError, batch_bucket, bucket_dim,
                                          default_dtype, resolve_dtype)
from lfcsr_jax.input import image_io
from tests.conftest import TINY_MODEL, make_tiny_export

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("inference") / "export")


@pytest.fixture(scope="module")
def bucketed(export_dir):
    return load_model(export_dir, dtype="float32")


@pytest.fixture(scope="module")
def exact(export_dir):
    return load_model(export_dir, dtype="float32", bucket=0)


def _benchmark_lr(shared_data, dataset, index):
    folder = shared_data / "benchmarks" / dataset / "LR_bicubic" / "X4"
    return image_io.read_image(sorted(folder.glob("*.png"))[index])


def test_bucketed_forward_equals_exact_shapes_on_real_images(shared_data, bucketed, exact):
    """Odd crops of real LR images: the padded, masked forward cropped back equals the forward
    of the exact shape, for both stages and for G_O / G_P alone (float32, 0-255 scale)."""
    errors = []
    crops = [("Set14", 0, (37, 29)), ("Set5", 1, (23, 41)), ("BSD100", 0, (45, 33))]
    for dataset, index, (h, w) in crops:
        lr = _benchmark_lr(shared_data, dataset, index)[:h, :w]
        assert bucketed.bucketed_lr_shape(h, w) != (h, w)  # really padded
        (y_o, y_p), (x_o, x_p) = bucketed.predict(lr), exact.predict(lr)
        assert y_o.shape == x_o.shape == (4 * h, 4 * w, 3) and y_p.shape == x_p.shape
        errors += [np.abs(y_o - x_o).max(), np.abs(y_p - x_p).max()]
        assert np.abs(x_p).max() > 10.0  # a real signal, not zeros
    # The stages alone (super_resolve's --tile_mode=perceptual path): G_P bucketed on HR.
    lr = _benchmark_lr(shared_data, "Set14", 3)[:31, :27]
    y_o = bucketed.objective(lr)
    errors.append(np.abs(y_o - exact.objective(lr)).max())
    errors.append(np.abs(bucketed.perceptual(y_o) - exact.perceptual(y_o)).max())
    print(f"bucketing max abs error (0-255): {max(errors):.2e}")
    assert max(errors) < 1e-3


class _StubForward:
    """Stands in for a jitted forward: records nothing, returns zeros of the output shape."""

    def __init__(self, scale, pair):
        self.scale, self.pair = scale, pair

    def __call__(self, params, x, mask):
        b, h, w, c = x.shape
        y = np.zeros((b, h * self.scale, w * self.scale, c), np.float32)
        return (y, y) if self.pair else y


def _stub_model(bucket):
    return LoadedModel(dict(TINY_MODEL), {"objective": None, "perceptual": None},
                                 _StubForward(4, True), _StubForward(4, False),
                                 _StubForward(1, False), bucket=bucket)


def test_compile_count_over_set14(shared_data):
    """Set14 (14 images, 10 LR sizes): one compile per size with exact shapes, 8 with buckets
    (img_003's 128 x 128 fills the bucket img_001 opened masked: it reuses that program)."""
    images = [_benchmark_lr(shared_data, "Set14", i) for i in range(14)]
    counts = {}
    for bucket in (0, BUCKET):
        model = _stub_model(bucket)
        for lr in images:
            y_o, y_p = model.predict(lr)
            assert y_o.shape == (4 * lr.shape[0], 4 * lr.shape[1], 3)
        counts[bucket] = model.compile_count
    print(f"Set14 compiles: exact shapes {counts[0]}, bucketed {counts[BUCKET]}")
    assert counts[0] == len({lr.shape for lr in images}) == 10
    assert counts[BUCKET] == 8


def test_bucket_dim_pads_little():
    for n in range(1, 3000):
        b = bucket_dim(n)
        assert n <= b <= max(n + 31, n * 9 // 8 + 1) and b % 32 == 0
    assert bucket_dim(17, 0) == 17
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


def test_batching_equals_one_at_a_time(bucketed):
    rng = np.random.default_rng(1)
    lrs = [rng.integers(0, 256, shape).astype(np.uint8)
           for shape in ((21, 27, 3), (30, 19, 3), (25, 25, 3))]  # one bucket: 32 x 32
    batched = bucketed.predict_batch(lrs)
    for lr, (b_o, b_p) in zip(lrs, batched):
        y_o, y_p = bucketed.predict(lr)
        assert np.abs(b_o - y_o).max() < 1e-3 and np.abs(b_p - y_p).max() < 1e-3


def test_a_full_bucket_runs_unmasked_with_the_masked_result(bucketed):
    """A 32 x 64 image fills its bucket: a fresh LoadedModel runs the unmasked program, its
    output is the masked forward's with an all-ones mask, and once the bucket's masked program
    exists a full image reuses it."""
    lr = np.random.default_rng(3).integers(0, 256, (32, 64, 3)).astype(np.uint8)
    model = dataclasses.replace(bucketed, compiled_shapes=set())
    assert model.bucketed_lr_shape(32, 64) == (32, 64)
    y_o, y_p = model.predict(lr)
    assert model.compiled_shapes == {("both", (1, 32, 64, 3), True)}
    model.predict(lr[:30])  # padded: the masked program of the same bucket
    model.predict(lr)  # full again: reuses it
    assert model.compiled_shapes == {("both", (1, 32, 64, 3), b) for b in (True, False)}
    ones = np.ones((1, 32, 64, 1), np.float32)
    m_o, m_p = bucketed.apply_fn(bucketed.params, lr[None].astype(np.float32), ones)
    assert np.abs(np.asarray(m_o)[0] - y_o).max() < 1e-3
    assert np.abs(np.asarray(m_p)[0] - y_p).max() < 1e-3
    assert np.abs(y_p).max() > 10.0  # a real signal


def test_super_resolve_batches_and_auto_tiles(tmp_path, export_dir, capsys):
    rng = np.random.default_rng(2)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, shape in (("a", (20, 24, 3)), ("b", (22, 18, 3)), ("big", (90, 80, 3))):
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(folder / f"{name}.png")
    plain = tmp_path / "plain"
    super_resolve.main([str(folder), f"--checkpoint={export_dir}", f"--output={plain}",
                        "--format=npy", "--batch=1", "--dtype=float32"])
    batched = tmp_path / "batched"
    super_resolve.main([str(folder), f"--checkpoint={export_dir}", f"--output={batched}",
                        "--format=npy", "--batch=4", "--dtype=float32"])
    for name in ("a", "b", "big"):
        one, many = (np.load(d / f"{name}_x4.npy") for d in (plain, batched))
        assert np.abs(one - many).max() < 1e-3
    # A budget the 90 x 80 image does not fit: it is tiled, and the console says so.
    model = load_model(export_dir, dtype="float32")
    budget = model.activation_bytes(40, 40)
    assert model.activation_bytes(90, 80) > budget >= model.activation_bytes(24, 24)
    capsys.readouterr()
    tiled = tmp_path / "tiled"
    super_resolve.main([str(folder), f"--checkpoint={export_dir}", f"--output={tiled}",
                        "--format=npy", "--dtype=float32", f"--memory_budget={budget}",
                        "--tile_overlap=8"])
    err = capsys.readouterr().err
    assert re.search(r"big\.png: estimated activation memory .* tiling with --tile=\d+", err)
    assert "a.png" not in err and "compiles (distinct shapes)" in err
    whole, cut = np.load(plain / "big_x4.npy"), np.load(tiled / "big_x4.npy")
    assert cut.shape == whole.shape and 0 < np.abs(cut - whole).mean() < 1.0  # tiles approximate
    np.testing.assert_allclose(np.load(tiled / "a_x4.npy"), np.load(plain / "a_x4.npy"), atol=1e-3)


def test_default_dtype_and_overrides():
    assert default_dtype("cpu") == "float32"
    assert default_dtype("gpu") == default_dtype("tpu") == "bfloat16"
    assert resolve_dtype("bfloat16") == "bfloat16"
    assert resolve_dtype("") == resolve_dtype("auto") == "float32"  # CPU tests
    with pytest.raises(InferenceError):
        resolve_dtype("float64")
    assert parse_bytes("2G") == 2 * 2 ** 30 and parse_bytes("512M") == 2 ** 29


def test_second_identical_run_does_not_compile(tmp_path, export_dir):
    """The persistent compilation cache: the second run loads every program from the cache and
    adds nothing to it."""
    Image.fromarray(np.full((12, 14, 3), 90, np.uint8)).save(tmp_path / "x.png")
    cache = tmp_path / "xla"
    env = dict(os.environ, JAX_PLATFORMS="cpu", LFCSR_XLA_CACHE=str(cache))

    def once(out):
        result = subprocess.run(
            [sys.executable, "-m", "lfcsr_jax.super_resolve", str(tmp_path / "x.png"),
             f"--checkpoint={export_dir}", f"--output={tmp_path / out}"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        match = re.search(r"XLA programs: (\d+) \((\d+) from the persistent cache\)", result.stderr)
        return int(match.group(1)), int(match.group(2)), sorted(p.name for p in cache.rglob("*"))

    programs, hits, files = once("first")
    assert programs > 0 and hits == 0 and files
    programs2, hits2, files2 = once("second")
    assert programs2 == hits2 == programs and files2 == files


def test_bucketed_forward_is_exact_for_the_paper_size_model(shared_data):
    """The paper's generator sizes (HAN 10 x 20 RCABs, 64 features; 15 Res-clique blocks), random
    weights, on an odd crop of a real image: bucketed == exact shapes, both stages."""
    import json

    from configs import x4
    from lfcsr_jax.models import generator

    cfg = {k: (list(v) if isinstance(v, tuple) else v)
           for k, v in x4.get_config("").model.to_dict().items()}
    cfg["dtype"] = "float32"
    shapes = jax.eval_shape(
        lambda k: generator.init_params(generator.build_lfcsr(cfg), k, (1, 8, 8, 3)),
        jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: (0.02 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    fns = jitted_forwards(json.dumps(cfg, sort_keys=True))
    bucketed = LoadedModel(cfg, params, *fns)
    exact = LoadedModel(cfg, params, *fns, bucket=0)
    lr = _benchmark_lr(shared_data, "Set5", 0)[:13, :11]
    (y_o, y_p), (x_o, x_p) = bucketed.predict(lr), exact.predict(lr)
    error = max(np.abs(y_o - x_o).max(), np.abs(y_p - x_p).max())
    print(f"paper-size bucketing max abs error (0-255): {error:.2e}")
    assert np.abs(x_p - x_p.mean()).max() > 1.0 and error < 1e-3


def _fake_proc(tmp_path, mem_available_kb: int, cgroup: dict[str, str]) -> tuple[str, str]:
    tmp_path.mkdir(parents=True)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: 99999999 kB\nMemAvailable: {mem_available_kb} kB\n")
    root = tmp_path / "cgroup"
    for name, text in cgroup.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(meminfo), str(root)


def test_host_available_memory_reads_cgroup_limits_and_meminfo(tmp_path):
    mib = 2 ** 20
    # cgroup v2: 4 GiB limit, 3 GiB used of which 1 GiB reclaimable page cache -> 2 GiB left.
    v2 = _fake_proc(tmp_path / "v2", 8 * 1024 * 1024, {
        "memory.max": str(4096 * mib), "memory.current": str(3072 * mib),
        "memory.stat": f"anon 1\ninactive_file {1024 * mib}\n"})
    assert memory.host_available_bytes(*v2) == 2048 * mib
    # No cgroup limit ("max"): MemAvailable.
    unlimited = _fake_proc(tmp_path / "max", 1024 * 1024, {"memory.max": "max",
                                                           "memory.current": "5"})
    assert memory.host_available_bytes(*unlimited) == 1024 * mib
    # cgroup v1, a limit above what the host has free: MemAvailable is the smaller.
    v1 = _fake_proc(tmp_path / "v1", 512 * 1024, {
        "memory/memory.limit_in_bytes": str(8192 * mib),
        "memory/memory.usage_in_bytes": str(1024 * mib)})
    assert memory.host_available_bytes(*v1) == 512 * mib
    assert memory.host_available_bytes(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_cpu_budget_comes_from_host_memory(monkeypatch):
    monkeypatch.delenv(memory.MEMORY_BUDGET_ENV, raising=False)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 8 * 2 ** 30)
    budget, source = memory_budget("")
    assert budget == int(8 * 2 ** 30 * HOST_MEMORY_SHARE) - memory.HOST_MEMORY_RESERVE
    assert source.startswith("host memory available 8")
    assert memory_budget("1G") == (2 ** 30, "--memory_budget")


def test_cpu_tiles_by_itself_when_host_memory_is_short(tmp_path, export_dir, capsys, monkeypatch):
    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, shape in (("small", (20, 24, 3)), ("big", (90, 80, 3))):
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(folder / f"{name}.png")
    monkeypatch.delenv(memory.MEMORY_BUDGET_ENV, raising=False)
    common = [str(folder), f"--checkpoint={export_dir}", "--format=npy", "--dtype=float32"]
    plain = tmp_path / "plain"
    super_resolve.main([*common, f"--output={plain}"])  # this machine's memory: no tiling
    assert "tiling" not in capsys.readouterr().err
    model = load_model(export_dir, dtype="float32")
    budget = model.activation_bytes(40, 40)
    assert model.activation_bytes(90, 80) > budget >= model.activation_bytes(24, 24)
    # A host with little memory left (and no fixed reserve, which alone exceeds a tiny model's
    # needs): the budget it yields is the 40 x 40 estimate.
    monkeypatch.setattr(memory, "HOST_MEMORY_RESERVE", 0)
    available = int(budget / HOST_MEMORY_SHARE) + 4
    monkeypatch.setattr(memory, "host_available_bytes", lambda: available)
    for mode, tolerance in (("both", 1.0), ("perceptual", 1e-3)):
        tiled = tmp_path / f"tiled_{mode}"
        super_resolve.main([*common, f"--output={tiled}", "--tile_overlap=8",
                            f"--tile_mode={mode}"])
        err = capsys.readouterr().err
        assert re.search(r"big\.png: estimated activation memory .* \(host memory available .*\): "
                         r"tiling with --tile=\d+", err), err
        assert "small.png" not in err
        whole, cut = np.load(plain / "big_x4.npy"), np.load(tiled / "big_x4.npy")
        assert cut.shape == whole.shape
        assert np.abs(cut - whole).mean() < tolerance, mode  # today's tiling tolerances
        np.testing.assert_array_equal(np.load(tiled / "small_x4.npy"),
                                      np.load(plain / "small_x4.npy"))
