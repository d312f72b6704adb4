"""The training program (`python -m lfcsr_jax.main`) against bad input and interruption:
bad config values, truncated images, a stop signal during the first compile. (Resuming after
a kill -9 is tested in tests/train_test.py, on a copy of its shared uninterrupted run.)

Runs are real `python -m lfcsr_jax.main` subprocesses on the tiny config.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest

from configs import x4
from lfcsr_jax.training import train
from tests.conftest import REPO_ROOT, assert_one_line_error, main_command, training_env


def _run_quick(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(main_command(*args), cwd=REPO_ROOT, env=training_env(1), capture_output=True,
                          text=True, timeout=600)


# ----------------------------------------------------------------------------- bad input


def test_unknown_config_field_and_workdir_file_fail_in_one_line(tmp_path):
    start = time.time()
    assert_one_line_error(_run_quick(tmp_path / "w", "--config.train.foo=1"),
                          "unknown config field train.foo")
    assert_one_line_error(_run_quick(tmp_path / "w", "--config.train.global_batch_sise=4"),
                          "close matches: train.global_batch_size")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_one_line_error(_run_quick(a_file), "--workdir", "is not a folder")
    assert time.time() - start < 120  # before TensorFlow and JAX start
    assert not (tmp_path / "w").exists()


def test_truncated_training_image_is_named_before_set_up(shared_data, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted((shared_data / "train_photos" / "HR").iterdir())[:3]:
        shutil.copy(source, photos)
    broken = sorted(photos.iterdir())[1]
    with open(broken, "r+b") as handle:
        handle.truncate(broken.stat().st_size // 2)
    result = _run_quick(tmp_path / "w", "--config.input.source=folder",
                        f"--config.input.hr_dir={photos}")
    assert_one_line_error(result, broken.name, "truncated")


def test_config_values_that_gave_tracebacks(tmp_path):
    workdir = tmp_path / "workdir"
    (workdir / "export").mkdir(parents=True)
    (workdir / "export" / "config.json").write_text("{}")
    not_npz = tmp_path / "vgg19.pth"
    not_npz.write_bytes(b"x")
    cases = [
        ("train", "global_batch_size", -4, "global_batch_size=-4 must be positive"),
        ("loss", "vgg_weights", str(not_npz), "expected the .npz"),
        ("train", "init_checkpoint", str(workdir), f"pass its export, '{workdir / 'export'}'"),
    ]
    for group, field, value, message in cases:
        config = x4.get_config("tiny")
        config[group][field] = value
        with pytest.raises(train.UserError) as error:
            train.validate_config(config)
        assert message in str(error.value) and "\n" not in str(error.value)


# ----------------------------------------------------------------------------- signals


def test_sigterm_during_compile_exits_at_once_without_a_checkpoint(tmp_path):
    workdir = tmp_path / "compiling"
    # A real compile (no cache), kept long by XLA's optimisations being off.
    env = dict(training_env(4, compile_cache=False), JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    process = subprocess.Popen(main_command(workdir), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # absl logs to stderr
        if "Compiling the pretrain step" in line:
            break
    time.sleep(0.5)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=600)
    elapsed = time.time() - sent
    assert process.returncode == 0
    assert "while a train step was compiling" in stdout
    assert elapsed < 10, elapsed  # the compile alone takes far longer on a CPU
    latest = workdir / "checkpoints" / "latest"
    assert not latest.exists() or not [p for p in latest.iterdir() if p.name.isdigit()]
