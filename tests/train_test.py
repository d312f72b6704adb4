"""The training program end to end on the tiny config: phases, resume, devices, processes, faults.

Each run is a real `python -m lfcsr_jax.main` subprocess (about half a minute on 2 cores with
XLA's optimisations off), so the same command users type is what is tested.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from configs import x4
from lfcsr_jax.training import train, train_logging
from lfcsr_jax.weights import exports
from tests.conftest import REPO_ROOT, main_command, run_main, training_env

TIMING_FIELDS = {"steps_per_second", "input_wait_fraction"}


def _last_train_row(workdir: Path) -> dict:
    rows = [r for r in train_logging.read_metrics(workdir) if r["phase"] != "validation"]
    return {k: v for k, v in rows[-1].items() if k not in TIMING_FIELDS}


def _export_leaves(workdir: Path) -> list[np.ndarray]:
    import jax

    _, params = exports.load_export(workdir / "export")
    return jax.tree_util.tree_leaves(params)


def _assert_close_runs(ours: Path, reference: Path, rtol: float, atol: float) -> None:
    row, ref_row = _last_train_row(ours), _last_train_row(reference)
    assert row.keys() == ref_row.keys()
    for key in ref_row:
        if key != "phase":
            np.testing.assert_allclose(row[key], ref_row[key], rtol=rtol, atol=atol, err_msg=key)
    for leaf, ref_leaf in zip(_export_leaves(ours), _export_leaves(reference), strict=True):
        np.testing.assert_allclose(leaf, ref_leaf, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run_main(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_tiny_runs_both_phases_and_writes_everything(uninterrupted):
    rows = train_logging.read_metrics(uninterrupted)
    phases = [r["phase"] for r in rows]
    total = sum(train.phase_lengths(x4.get_config("tiny")).values())
    assert {"pretrain", "admm", "validation"} <= set(phases)
    assert rows[-1]["step"] == total
    admm_row = next(r for r in rows if r["phase"] == "admm")
    for key in ("loss/contextual", "admm/residual_l1", "admm/s_norm", "disc/real_logit",
                "grad_norm/objective", "learning_rate/generator", "steps_per_second"):
        assert key in admm_row, key
    assert (uninterrupted / "checkpoints" / "latest" / str(total)).is_dir()
    assert list((uninterrupted / "checkpoints" / "best_psnr_perceptual").iterdir())
    assert list(uninterrupted.glob("events.out.tfevents.*"))
    model_cfg, params = exports.load_export(uninterrupted / "export")
    assert model_cfg["han_features"] == 8 and set(params) == {"objective", "perceptual"}
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert {"psnr_objective", "psnr_perceptual", "psnr_bicubic"} <= set(summary["validation"])


def test_gcs_workdir_sigterm_resume_matches_uninterrupted(uninterrupted, gcs_emulator, gcs_root,
                                                         tmp_path):
    """SIGTERM saves, and a rerun resumes to the same result as the uninterrupted run, with
    --workdir=gs://...: config, checkpoints, metrics.jsonl, export and summary land in the
    bucket (the local GCS emulator). The same stop and resume on a local workdir is run by the
    two-process test below (a local copy of this test was dropped: it added nothing but 60 s). TensorBoard goes to a local folder: its writer is
    TensorFlow's GCS client, which cannot be pointed at an emulator (tests/gcs_emulator.py)."""
    from lfcsr_jax import paths
    from tests.gcs_emulator import object_names

    workdir = f"{gcs_root}/run"
    prefix = workdir.split("/", 3)[3]
    overrides = [f"--config.train.tensorboard_dir={tmp_path / 'tb'}"]
    process = subprocess.Popen(main_command(workdir, *overrides), cwd=REPO_ROOT, env=training_env(4),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while (not any("/checkpoints/latest/4/" in name for name in
                   object_names(gcs_emulator.endpoint, prefix))
           and process.poll() is None and time.time() < deadline):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    assert "Stopped by SIGTERM" in stdout, "the run ended before the signal; nothing was tested"
    assert not [n for n in object_names(gcs_emulator.endpoint, prefix) if "/export/" in n]
    resumed = run_main(workdir, *overrides)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resuming" in resumed.stderr
    names = object_names(gcs_emulator.endpoint, prefix)
    for expected in ("/config.json", "/metrics.jsonl", "/summary.md", "/summary.json",
                     "/export/config.json"):
        assert any(n.endswith(expected) and n.count("/") == prefix.count("/") + expected.count("/")
                   for n in names), (expected, names[:20])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not [n for n in names if "tfevents" in n]
    assert not (REPO_ROOT / "gs:").exists()  # nothing went to a local folder named after the URI
    # The same numbers as the uninterrupted local run, in every logged metric and every weight.
    _assert_close_runs(paths.location(workdir), uninterrupted, rtol=0, atol=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_processes(workdir: Path, port: int) -> list[subprocess.Popen]:
    # No shared compile cache here: with it, one process of a resumed pair once reached the
    # first collective more than 30 s before the other (a cache hit against a compile, on a
    # loaded machine), past gloo's fixed set-up deadline. Compiling alike keeps them in step.
    env = dict(training_env(2, compile_cache=False), JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    return [subprocess.Popen(
        main_command(workdir, "--config.train.distributed=True",
                 f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={index}"),
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)]


def test_two_processes_stop_together_on_one_sigterm_and_resume(uninterrupted, tmp_path):
    """A preemption notice on one host of two: JAX's preemption service makes both hosts stop
    and save at the same step (no per-step collective), and rerunning both resumes to the same
    result as one process with the same four devices."""
    workdir = tmp_path / "two"
    processes = _two_processes(workdir, _free_port())
    first_checkpoint = workdir / "checkpoints" / "latest" / "4"
    deadline = time.time() + 600
    while not first_checkpoint.is_dir() and processes[1].poll() is None and time.time() < deadline:
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)  # the notice reaches host 1 only
    outputs = [process.communicate(timeout=900) for process in processes]
    stopped_at = set()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-4000:]
        assert "Stopped by" in stdout, "a host ran to the end; nothing was tested"
        stopped_at.add(stdout.split("Stopped by", 1)[1].split(" at step ", 1)[1].split(";")[0])
    assert len(stopped_at) == 1, stopped_at  # both hosts saved the same step
    assert (workdir / "checkpoints" / "latest" / stopped_at.pop()).is_dir()
    assert not (workdir / "export").exists()
    resumed = _two_processes(workdir, _free_port())
    for process, (_, stderr) in zip(resumed, [p.communicate(timeout=900) for p in resumed]):
        assert process.returncode == 0, stderr[-4000:]
        assert "Resuming" in stderr
    # Two processes x two devices hold the same global batch as one process with four devices.
    _assert_close_runs(workdir, uninterrupted, rtol=2e-3, atol=2e-4)


def test_planted_nan_stops_cleanly_and_keeps_last_checkpoint(tmp_path):
    # A subprocess, not in-process: it then loads its compiles from the session's shared cache
    # (26 s in the suite); in-process it compiles both steps afresh (34 s measured).
    # An absurd ADMM learning rate makes the weights overflow in the first ADMM steps (step > 4,
    # after the pre-training checkpoint at step 4).
    result = run_main(tmp_path / "nan", "--config.optim.generator_lr=1e30")
    assert result.returncode == 3, result.stderr[-4000:]
    assert "Non-finite loss or input at step" in result.stdout
    assert "step 4" in result.stdout  # names the intact checkpoint
    assert (tmp_path / "nan" / "checkpoints" / "latest" / "4").is_dir()
    assert not (tmp_path / "nan" / "export").exists()


def test_bad_config_fails_before_compiling(tmp_path):
    """In-process; main's one `main: error:` line and exit status 2 for such errors are tested
    with the real command in tests/main_faults_test.py."""
    config = x4.get_config("tiny")
    config.input.lr_patch = 9
    config.admm.method = "magic"
    start = time.time()
    with pytest.raises(train.UserError) as raised:
        train.train_and_evaluate(config, str(tmp_path / "bad"))
    assert "input.lr_patch=9" in str(raised.value) and "admm.method='magic'" in str(raised.value)
    assert time.time() - start < 5  # before any compile
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("field, value, message", [
    ("train.global_batch_size", 6, "divisible by the device count"),
    ("input.source", "folder", "input.hr_dir must be set"),
    ("model.dtype", "float16", "model.dtype"),
    ("loss.vgg_weights", "/nonexistent/vgg19.npz", "no such file"),
    ("train.phases", ("pretrain", "finetune"), "train.phases"),
])
def test_validate_config_names_the_field(field, value, message):
    config = x4.get_config("tiny")
    group, name = field.split(".")
    config[group][name] = value
    with pytest.raises(train.UserError, match=message):
        train.validate_config(config)


def test_workdir_of_another_config_is_refused(tmp_path):
    config = x4.get_config("tiny")
    train._claim_workdir(tmp_path, config)
    config.admm.rho = 1.0
    with pytest.raises(train.UserError, match="another configuration"):
        train._claim_workdir(tmp_path, config)
    config.train.allow_config_change = True
    train._claim_workdir(tmp_path, config)


def test_init_checkpoint_loads_generators_and_rejects_other_models(tmp_path):
    import functools

    import jax

    from lfcsr_jax.training import train_state

    config = x4.get_config("tiny")
    networks = train_state.make_networks(config)
    init = jax.jit(functools.partial(train_state.init_train_state, config=config, networks=networks))
    with jax.threefry_partitionable(False):
        source, fresh = init(jax.random.PRNGKey(1)), init(jax.random.PRNGKey(2))
    export = exports.save_export(tmp_path / "export", jax.device_get(
        train_state.generator_params(source)), config.model.to_dict())
    config.train.init_checkpoint = str(export)
    loaded = train.maybe_load_init_checkpoint(config, fresh)
    for ours, theirs in zip(jax.tree_util.tree_leaves(train_state.generator_params(loaded)),
                            jax.tree_util.tree_leaves(train_state.generator_params(source)), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # The discriminator is not part of an export and keeps its fresh initialisation.
    np.testing.assert_array_equal(
        jax.tree_util.tree_leaves(loaded.discriminator_params)[0],
        jax.tree_util.tree_leaves(fresh.discriminator_params)[0])
    config.model.han_features = 16
    with pytest.raises(train.UserError, match="han_features"):
        train.maybe_load_init_checkpoint(config, fresh)


def _copy_unfinished(uninterrupted: Path, workdir: Path) -> Path:
    """The finished run's workdir as a run that died right after its last checkpoint."""
    import shutil

    shutil.copytree(uninterrupted, workdir)
    for finished in ("export", "summary.json", "summary.md"):
        target = workdir / finished
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return workdir


def _flip_data_bytes(step_dir: Path) -> None:
    data_files = [p for p in (step_dir / "state").rglob("*")
                  if p.is_file() and p.parent.name == "d"]
    assert data_files, f"no data files under {step_dir}"
    for path in data_files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def _assert_monotonic(workdir: Path) -> None:
    rows = train_logging.read_metrics(workdir)
    steps = [r["step"] for r in rows if r["phase"] != "validation"]
    assert steps == sorted(set(steps)), steps  # no repeats, never backwards
    validated = [r["step"] for r in rows if r["phase"] == "validation"]
    assert len(validated) == len(set(validated)), validated


def test_damaged_newest_checkpoint_resumes_from_the_older_one(uninterrupted, tmp_path):
    """Also the workdir a kill -9 leaves: metrics.jsonl holds rows past the checkpoint the run
    resumes from (steps 5-8 and the validation at 8 here) and ends in a line cut short. The
    resumed run logs those steps once, in order. (A real SIGKILL mid-run was a test of its
    own, at the cost of a third of a training run; the state it left is the one built here.)"""
    workdir = _copy_unfinished(uninterrupted, tmp_path / "damaged")
    total = sum(train.phase_lengths(x4.get_config("tiny")).values())
    _flip_data_bytes(workdir / "checkpoints" / "latest" / str(total))
    with open(workdir / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        metrics.write('{"step": %d, "phase": "admm", "loss/cont' % total)  # killed mid-write
    assert max(r["step"] for r in _rows_that_parse(workdir)) == total
    resumed = run_main(workdir)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    reports = [line for line in resumed.stderr.splitlines() if "is damaged" in line]
    assert len(reports) == 1 and f"step {total}" in reports[0], reports
    assert f"at step {total - 4}" in resumed.stderr  # "Resuming from ... at step 4"
    aside = list((workdir / "checkpoints" / "damaged").iterdir())
    assert [p.name.split("-")[:2] for p in aside] == [["latest", str(total)]]
    _assert_monotonic(workdir)
    _assert_close_runs(workdir, uninterrupted, rtol=1e-6, atol=1e-6)


def _rows_that_parse(workdir: Path) -> list[dict]:
    rows = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def test_rerun_of_a_finished_run_validates_but_logs_nothing_twice(uninterrupted, tmp_path):
    import shutil

    workdir = tmp_path / "finished"
    shutil.copytree(uninterrupted, workdir)
    again = run_main(workdir)  # resumes at the last step
    assert again.returncode == 0, again.stderr[-4000:]
    total = sum(train.phase_lengths(x4.get_config("tiny")).values())
    assert f"at step {total}" in again.stderr and f"validation at step {total}" in again.stderr
    _assert_monotonic(workdir)
    assert train_logging.read_metrics(workdir) == train_logging.read_metrics(uninterrupted)


def test_all_checkpoints_damaged_exits_2_in_one_line(uninterrupted, tmp_path):
    workdir = _copy_unfinished(uninterrupted, tmp_path / "all_damaged")
    steps = [p for p in (workdir / "checkpoints" / "latest").iterdir() if p.name.isdigit()]
    for step_dir in steps:
        _flip_data_bytes(step_dir)
    result = run_main(workdir)
    assert result.returncode == 2, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("main: error:")]
    assert len(errors) == 1 and "no checkpoint verifies" in errors[0], result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (workdir / "checkpoints" / "latest").iterdir()
                  if p.name.isdigit()) == sorted(p.name for p in steps)  # nothing moved
