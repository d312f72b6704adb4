"""Every program against bad input and interruption: one stderr line, exit 2, nothing lost.

The commands run as real subprocesses (`python -m lfcsr_jax.<command>`), since what is tested is
what a user sees: the exit status and the whole of stderr (no traceback).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import errors, paths, super_resolve
from lfcsr_jax.weights import exports
from tests.conftest import assert_one_line_error, make_tiny_export

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
                "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                "PYTHONPATH": str(REPO_ROOT)})
    return env


def run_cli(module: str, *args: str, file_limit_kb: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", f"lfcsr_jax.{module}", *map(str, args)]
    if file_limit_kb:  # `ulimit -f`: writes past the limit fail with EFBIG
        command = ["bash", "-c", f'ulimit -f {file_limit_kb} && exec "$@"', "bash", *command]
    return subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return make_tiny_export(tmp_path_factory.mktemp("programs") / "export")


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)).save(folder / f"{name}.png")
    return folder


# ----------------------------------------------------------------------------- the shared helper


def test_killed_write_leaves_old_content_or_nothing(tmp_path):
    # A stand-in writer that is slow enough to be killed mid-write, through the real
    # atomic_write that write_output uses.
    target = tmp_path / "out_x4.png"
    target.write_bytes(b"OLD")
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from lfcsr_jax import super_resolve
        def slow(handle):
            handle.write(b"NEW" * 1000)
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)
        super_resolve.atomic_write(Path({str(target)!r}), slow)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=_env(),
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert target.read_bytes() == b"OLD"  # never a half-written file under the final name
    fresh = tmp_path / "fresh_x4.npy"
    process = subprocess.Popen([sys.executable, "-c", script.replace(str(target), str(fresh))],
                               cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not fresh.exists()


def test_npy_write_failure_leaves_no_truncated_file(tmp_path, export_dir, inputs):
    out = tmp_path / "out"  # the .npy is 48 x 64 x 3 float32 = 36 KB
    result = run_cli("super_resolve", f"--checkpoint={export_dir}", inputs / "a.png",
                     f"--output={out}", "--format=npy", file_limit_kb=10)
    assert_one_line_error(result, "written 0, failed 1")
    assert "cannot write" in result.stderr
    assert not list(out.iterdir())  # neither a truncated .npy nor a temp file


def test_hard_link_to_an_input_is_not_overwritten(tmp_path, export_dir, inputs):
    out = tmp_path / "out"
    out.mkdir()
    os.link(inputs / "a.png", out / "a_x4.png")
    before = (inputs / "a.png").read_bytes()
    result = run_cli("super_resolve", f"--checkpoint={export_dir}", inputs / "a.png",
                     f"--output={out}")
    assert_one_line_error(result, "would overwrite the input")
    assert (inputs / "a.png").read_bytes() == before


# ----------------------------------------------------------------------------- super_resolve


def test_super_resolve_bad_arguments_fail_in_one_line(tmp_path, export_dir, inputs):
    (tmp_path / "empty").mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    workdir = tmp_path / "workdir"
    shutil.copytree(export_dir, workdir / "export")
    (workdir / "checkpoints").mkdir()
    cases = [
        ((tmp_path / "empty",), "holds no images"),
        ((inputs, f"--output={a_file}/sub"), "is a file"),
        ((inputs / "a.png", f"--output={tmp_path / 'result.jpg'}"), ".jpg files are not written"),
        ((inputs, f"--checkpoint={workdir}"), f"--checkpoint={workdir / 'export'}"),
        ((inputs, f"--checkpoint={a_file}"), "is a file; pass an export directory"),
    ]
    for args, needle in cases:
        full = [f"--checkpoint={export_dir}", f"--output={tmp_path / 'out'}", *args]
        assert_one_line_error(run_cli("super_resolve", *full), needle)
    assert not (tmp_path / "result.jpg").exists()
    # argparse rejects the dtype, and the help lists every accepted one.
    bad_dtype = run_cli("super_resolve", f"--checkpoint={export_dir}", inputs,
                        f"--output={tmp_path / 'out'}", "--dtype=float16x")
    assert bad_dtype.returncode == 2 and "Traceback" not in bad_dtype.stderr
    assert "float16x" in bad_dtype.stderr
    help_text = " ".join(run_cli("super_resolve", "--help").stdout.split())
    assert "float32 | bfloat16 | float16" in help_text


def test_unwritable_output_is_found_before_the_model_loads(tmp_path, inputs, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    loaded = []
    monkeypatch.setattr(super_resolve, "load_model", lambda *a: loaded.append(a))
    with pytest.raises(SystemExit, match="is a file"):
        super_resolve.main([str(inputs), "--checkpoint=unused", f"--output={a_file}/sub"])
    assert not loaded


def _refuses_writes(folder: str) -> bool:
    """Whether creating a file in `folder` fails (it does in /sys, even for root)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


def test_output_folder_is_tested_by_writing(tmp_path, inputs, monkeypatch):
    # /sys passes os.access(W_OK) for root, but no file can be created there.
    if not os.path.isdir("/sys") or not _refuses_writes("/sys"):
        pytest.skip("needs a folder that refuses writes (/sys on Linux)")
    with pytest.raises(errors.UserError, match=r"--output=/sys/lfcsr-out: /sys is not writable"):
        paths.check_output_dir("/sys/lfcsr-out", "--output")
    loaded = []
    monkeypatch.setattr(super_resolve, "load_model", lambda *a: loaded.append(a))
    with pytest.raises(SystemExit, match="/sys is not writable"):
        super_resolve.main([str(inputs), "--checkpoint=unused", "--output=/sys/lfcsr-out"])
    assert not loaded
    # A writable folder passes, and the probe file is gone afterwards.
    (tmp_path / "ok").mkdir()
    paths.check_output_dir(tmp_path / "ok" / "new", "--output")
    assert list((tmp_path / "ok").iterdir()) == []


def test_a_bad_file_does_not_abort_the_batch(tmp_path, export_dir, inputs):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (inputs / "c.png").write_bytes((inputs / "a.png").read_bytes())
    out = tmp_path / "out"
    result = run_cli("super_resolve", f"--checkpoint={export_dir}", inputs, f"--output={out}")
    assert_one_line_error(result, "written 3, failed 1", "broken.png")
    assert "failed: " in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.png", "b_x4.png", "c_x4.png"]
    shutil.rmtree(out)
    fast = run_cli("super_resolve", f"--checkpoint={export_dir}", inputs, f"--output={out}",
                   "--fail_fast")
    assert_one_line_error(fast, "broken.png")
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.png", "b_x4.png"]  # stopped at it


# ----------------------------------------------------------------------------- damaged exports


def _corrupt_copies(export_dir: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a damaged copy of the export, what the error must name)."""
    copies = {}
    for name in ("truncated", "random", "config", "metadata", "mismatch"):
        shutil.copytree(export_dir, root / name)
    data = sorted((root / "truncated/params").rglob("d/*"), key=lambda p: p.stat().st_size)
    os.truncate(data[-1], 1000)
    copies["truncated"] = (root / "truncated", "params: cannot read the parameters")
    rng = np.random.default_rng(0)
    for path in (root / "random/params").rglob("d/*"):
        path.write_bytes(rng.bytes(path.stat().st_size))
    copies["random"] = (root / "random", "params: cannot read the parameters")
    (root / "config/config.json").write_text('{"format": ')
    copies["config"] = (root / "config", "config.json: unreadable or not JSON")
    (root / "metadata/params/_METADATA").write_text("{broken")
    copies["metadata"] = (root / "metadata", "_METADATA: unreadable or not JSON")
    info = json.loads((root / "mismatch/config.json").read_text())
    info["model"]["han_features"] = 16
    (root / "mismatch/config.json").write_text(json.dumps(info))
    copies["mismatch"] = (root / "mismatch", "config.json does not match params/")
    copies["altered"] = (_altered_copy(export_dir, root), "checksum mismatch")
    return copies


def _altered_copy(export_dir: Path, root: Path) -> Path:
    """An export whose params/ decode cleanly but hold one changed value (silent corruption):
    only the checksums in config.json can tell."""
    _, params = exports.load_export(export_dir)
    leaf = params["perceptual"][next(iter(params["perceptual"]))]
    while isinstance(leaf, dict):
        leaf = leaf[next(iter(leaf))]
    leaf.reshape(-1)[0] += 1.0
    other = exports.save_export(root / "altered_source", params, {})
    shutil.copytree(export_dir, root / "altered")
    shutil.rmtree(root / "altered/params")
    shutil.copytree(other / "params", root / "altered/params")
    return root / "altered"


def test_altered_export_is_named_by_evaluate(tmp_path, export_dir):
    (tmp_path / "data/Set5/HR").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "data/Set5/HR/x.png")
    altered = _altered_copy(export_dir, tmp_path)
    result = run_cli("evaluate", f"--checkpoint={altered}", f"--data_dir={tmp_path / 'data'}",
                     "--datasets=Set5", "--metrics=psnr")
    assert_one_line_error(result, "checksum mismatch", str(altered / "params"), "config.json")


def test_corrupt_exports_are_named_in_one_line(tmp_path, export_dir, inputs):
    for name, (damaged, needle) in _corrupt_copies(export_dir, tmp_path).items():
        result = run_cli("super_resolve", f"--checkpoint={damaged}", inputs,
                         f"--output={tmp_path / 'out'}")
        assert_one_line_error(result, needle, str(damaged))
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr[-3000:])


def test_export_housekeeping(tmp_path, export_dir):
    _, params = exports.load_export(export_dir)
    stale = tmp_path / ".export.tmp-killed"
    (stale / "params").mkdir(parents=True)
    old_umask = os.umask(0o022)
    try:
        target = exports.save_export(tmp_path / "export", params, {"scale": 4})
    finally:
        os.umask(old_umask)
    assert not stale.exists()  # left by a killed export: cleaned by the next one
    assert (os.stat(target).st_mode & 0o777) == 0o755  # the umask, not mkdtemp's 0700


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture()
def broken_set5(shared_data, tmp_path) -> Path:
    """A copy of Set5 that the test then damages; Set14 beside it is intact."""
    root = tmp_path / "data"
    root.mkdir()
    shutil.copytree(shared_data / "benchmarks" / "Set5", root / "Set5")
    (root / "Set14").symlink_to(shared_data / "benchmarks" / "Set14")
    return root


def _evaluate_bicubic(data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("evaluate", "--model=bicubic", f"--data_dir={data_dir}", "--metrics=psnr",
                   *extra)


def test_incomplete_dataset_fails_naming_the_file(broken_set5):
    lr_dir = broken_set5 / "Set5" / "LR_bicubic" / "X4"
    (lr_dir / "img_003_SRF_4_LR.png").unlink()
    result = _evaluate_bicubic(broken_set5, "--datasets=Set5,Set14")
    assert_one_line_error(result, "dataset Set5", "img_003_SRF_4_HR.png")


def test_mismatched_and_truncated_lr_fail_in_one_line(broken_set5):
    lr_file = broken_set5 / "Set5" / "LR_bicubic" / "X4" / "img_002_SRF_4_LR.png"
    image = Image.open(lr_file)
    image.crop((0, 0, image.width - 3, image.height)).save(lr_file)
    assert_one_line_error(_evaluate_bicubic(broken_set5, "--datasets=Set5"), "img_002_SRF_4")
    os.truncate(lr_file, lr_file.stat().st_size // 2)
    assert_one_line_error(_evaluate_bicubic(broken_set5, "--datasets=Set5"),
                          "img_002_SRF_4_LR.png")


def test_absent_dataset_is_listed_as_skipped(shared_data, tmp_path):
    out = tmp_path / "report"
    result = _evaluate_bicubic(shared_data / "benchmarks", "--datasets=Set5,Urban100",
                               "--max_images=1", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped (not found under" in result.stdout and "Urban100" in result.stdout
    assert "skipped (not found): Urban100" in (out / "table.md").read_text()


def test_evaluate_bad_flags_fail_before_scoring(shared_data, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    data = shared_data / "benchmarks"
    cases = [
        (("--metrics=psnr,sim",), "--metrics: unknown ['sim']"),
        # NRQM and PI need a model file nothing here reads: refused before any scoring.
        (("--metrics=psnr,pi", f"--output_dir={tmp_path / 'pi'}"),
         "--metrics: pi cannot be computed here", "model.mat", "chaoma99/sr-metric",
         "choose from psnr, ssim, lpips, niqe"),
        (("--alphas=0,x",), "--alphas"),
        (("--max_images=-1",), "--max_images=-1"),
        ((f"--output_dir={a_file}",), "--output_dir"),
        ((f"--output_dir={a_file}/sub",), "is a file"),
    ]
    for args, *needles in cases:
        assert_one_line_error(_evaluate_bicubic(data, "--datasets=Set5", *args), *needles)
    assert not (tmp_path / "pi").exists()  # refused before the output folder was made
    bad_checkpoint = run_cli("evaluate", f"--checkpoint={tmp_path / 'nope'}", f"--data_dir={data}",
                             "--datasets=Set5", "--metrics=psnr")
    assert_one_line_error(bad_checkpoint, "nope")


# ----------------------------------------------------------------------------- convert


def test_convert_bad_weights_fail_in_one_short_line(tmp_path):
    torch = pytest.importorskip("torch")
    random_file = tmp_path / "random.pt"
    random_file.write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    np.savez(tmp_path / "other.npz", **{f"layer{i}.weight": np.zeros(1, np.float32)
                                        for i in range(2014)})
    result = run_cli("convert", "pdasr", f"--input={random_file}", f"--output={tmp_path / 'e1'}")
    line = assert_one_line_error(result, "random.pt", "read safely")
    assert "weights_only=False" not in result.stderr  # torch's advice is wrong for such files
    assert_one_line_error(run_cli("convert", "pdasr", f"--input={tmp_path / 'list.pt'}",
                                  f"--output={tmp_path / 'e2'}"), "list.pt", "list")
    wrong = run_cli("convert", "pdasr", f"--input={tmp_path / 'other.npz'}",
                    f"--output={tmp_path / 'e3'}")
    line = assert_one_line_error(wrong, "unknown keys (2014)", "more")
    assert len(line) < 2000, len(line)
    vgg = run_cli("convert", "vgg19", f"--input={tmp_path / 'other.npz'}",
                  f"--output={tmp_path / 'vgg19'}")
    assert_one_line_error(vgg, "must end with .npz")
    assert not list(tmp_path.glob("vgg19*")) and not list(tmp_path.glob("e[123]"))


# ----------------------------------------------------------------------------- complexity


@pytest.mark.parametrize("args, needle", [
    (("--config=configs/x4.py:tiny", "--latency_size=0"), "--latency_size=0"),
    (("--config=configs/x4.py:tiny", "--latency_size=-5"), "--latency_size=-5"),
    (("--config=configs/x4.py:tiny", "--repeats=0"), "--repeats=0"),
    (("--config=configs/x4.py:tinyy",), "unknown variant 'tinyy'"),
])
def test_complexity_bad_flags_fail_in_one_line(args, needle):
    assert_one_line_error(run_cli("complexity", *args), needle)
