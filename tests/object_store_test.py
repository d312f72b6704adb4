"""gs:// locations fail fast in one line; uploads outlast a short outage (object_store.py).

Against the local emulator (tests/gcs_emulator.py) and a few local stand-ins: a closed port, a
host under .invalid (never resolves, and fails locally), a server that answers 401/403, one
that never answers. No test reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import convert, evaluate, object_store, paths, super_resolve, sweep

REPO_ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens there once the socket is closed


def _check(uri: str, must_exist: bool = True) -> str:
    with pytest.raises(object_store.ObjectStoreError) as error:
        object_store.check_locations([("--checkpoint", uri, must_exist)])
    message = str(error.value)
    assert "\n" not in message and f"--checkpoint={uri}" in message
    return message


def test_connection_refused(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    assert "connection refused" in _check("gs://bucket/export")
    assert time.monotonic() - start < 10  # no retry loop


def test_unresolvable_host(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://nonexistent.invalid:4443")
    message = _check("gs://bucket/export")
    assert "cannot resolve" in message and "nonexistent.invalid" in message


def test_missing_credentials_say_how_to_log_in(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    message = _check("gs://bucket/export")
    assert "no Google Cloud credentials" in message
    assert "gcloud auth application-default login" in message


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 401

    def do_GET(self):  # noqa: N802 (http.server API)
        self.send_response(self.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, needle", [(401, "credentials were refused"),
                                            (403, "may not access bucket gs://bucket")])
def test_refused_credentials(monkeypatch, status, needle):
    handler = type("Handler", (_Answer,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
        message = _check("gs://bucket/export")
    finally:
        server.shutdown()
    assert needle in message and "gcloud auth application-default login" in message


def test_a_silent_server_times_out_at_the_configured_bound(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection (kernel backlog), never answers
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setenv(object_store.TIMEOUT_ENV, "1.5")
        start = time.monotonic()
        message = _check("gs://bucket/export")
        elapsed = time.monotonic() - start
    finally:
        listener.close()
    assert "no answer" in message and "1.5 s" in message and object_store.TIMEOUT_ENV in message
    assert 1.0 < elapsed < 6.0


def test_bad_timeout_setting(monkeypatch):
    monkeypatch.setenv(object_store.TIMEOUT_ENV, "soon")
    with pytest.raises(object_store.UserError, match="LFCSR_GCS_CHECK_TIMEOUT_S='soon'"):
        object_store.check_locations([("--output", "gs://b/x", False)])


def test_missing_bucket_and_missing_object(gcs_root):
    bucket_message = _check(f"gs://no-such-bucket-{uuid.uuid4().hex[:6]}/x", must_exist=False)
    assert "does not exist" in bucket_message and "buckets create" in bucket_message
    assert "no such file or folder" in _check(f"{gcs_root}/absent-export")
    # Present: an object, and a folder (a prefix of objects); an output needs only its bucket.
    paths.location(f"{gcs_root}/export/config.json").write_text("{}")
    object_store.check_locations([("--checkpoint", f"{gcs_root}/export", True),
                                  ("--checkpoint", f"{gcs_root}/export/config.json", True),
                                  ("--output", f"{gcs_root}/new/out", False),
                                  ("--local", "/not/checked", True)])


def test_config_locations_name_the_field():
    import ml_collections

    config = ml_collections.ConfigDict({
        "train": {"init_checkpoint": "gs://b/export", "tensorboard_dir": "gs://b/tb"},
        "input": {"hr_dir": "/local/hr", "lr_cache_dir": "gs://b/cache"}})
    assert sorted(object_store.config_locations(config)) == [
        ("--config.input.lr_cache_dir", "gs://b/cache", False),
        ("--config.train.init_checkpoint", "gs://b/export", True),
        ("--config.train.tensorboard_dir", "gs://b/tb", False)]


def _image(tmp_path) -> Path:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def test_every_program_checks_before_any_work(gcs_root, tmp_path, capsys):
    missing = f"{gcs_root}/absent"
    calls = [
        ("super_resolve", lambda: super_resolve.main([str(_image(tmp_path)),
                                                      f"--checkpoint={missing}",
                                                      f"--output={tmp_path / 'out'}"])),
        ("evaluate", lambda: evaluate.main([f"--checkpoint={missing}",
                                            f"--data_dir={tmp_path}"])),
        ("convert", lambda: convert.main(["pdasr", f"--input={missing}.pth",
                                          f"--output={tmp_path / 'export'}"])),
    ]
    for prog, call in calls:
        with pytest.raises(SystemExit) as caught:
            call()
        assert caught.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{prog}: error: ") and missing in err[0], err
        assert "no such file or folder" in err[0]
    # sweep reports user errors in one line and exits 2, as the other programs do.
    for flag, argv in (("--data_dir", f"--data_dir={missing}"),
                       ("--config.train.init_checkpoint", f"--set=train.init_checkpoint={missing}")):
        needle = f"^sweep: error: {flag}=.*no such file or folder"
        with pytest.raises(SystemExit, match=needle) as caught:
            sweep.main(["--config=configs/x4.py:tiny", "--values=admm.lambda_r=0",
                        f"--workdir={tmp_path / 'sweep'}", argv])
        assert caught.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sweep: error: ") and missing in err[0], err
    assert not (tmp_path / "sweep").exists()  # nothing created, nothing trained


def test_training_with_an_absent_bucket_exits_2_in_one_line(gcs_emulator, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "lfcsr_jax.main", "--config=configs/x4.py:tiny",
         "--workdir=gs://no-such-bucket-for-training/run"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [line for line in errors if line.startswith("main: error: --workdir=")]
    assert len(errors) == 1
    assert "bucket gs://no-such-bucket-for-training does not exist" in errors[0]


# ----------------------------------------------------------------------------- retries


def test_retry_transient_backs_off_then_succeeds_and_gives_up_on_the_rest():
    delays, attempts = [], []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("emulator down")
        return "written"

    assert object_store.retry_transient(flaky, "upload", sleep=delays.append) == "written"
    assert delays == [2.0, 4.0] and len(attempts) == 3

    def not_found():
        attempts.append(1)
        raise FileNotFoundError("no such bucket")

    attempts.clear()
    with pytest.raises(FileNotFoundError):
        object_store.retry_transient(not_found, "upload", sleep=delays.append)
    assert len(attempts) == 1  # not retried

    def always_down():
        raise TimeoutError("still down")

    delays.clear()
    with pytest.raises(TimeoutError):
        object_store.retry_transient(always_down, "upload", attempts=3, sleep=delays.append)
    assert delays == [2.0, 4.0]


@pytest.mark.parametrize("gcsfs_retries", [True, False])
def test_upload_outlasts_an_emulator_restart(gcs_emulator, monkeypatch, caplog, gcsfs_retries):
    """The writer path (metrics.jsonl, every output file) across a real outage: the emulator
    is stopped, and restarted on the same port 3 s into the write. gcsfs retries by itself (for
    about 30 s); with its retries turned off, retry_transient alone must carry the write."""
    import gcsfs
    import gcsfs.retry

    from tests.gcs_emulator import BUCKET, Emulator, client_environment

    if not gcsfs_retries:
        monkeypatch.setattr(gcsfs.retry, "is_retriable", lambda error: False)

    own = Emulator()  # not the session's: stopping it must not lose other tests' objects
    for key, value in client_environment(own.endpoint).items():
        monkeypatch.setenv(key, value)
    gcsfs.GCSFileSystem.clear_instance_cache()  # a client that reads the new endpoint
    target = f"gs://{BUCKET}/restart/metrics.jsonl"
    restarted = []
    try:
        paths.write_text_atomic(target, "before\n")
        own.stop()

        def restart():
            time.sleep(3)
            restarted.append(Emulator(port=own.port))

        thread = threading.Thread(target=restart)
        thread.start()
        with caplog.at_level("WARNING"):
            paths.write_text_atomic(target, '{"step": 1}\n{"step": 2}\n')
        thread.join()
        assert restarted, "the emulator did not come back"
        assert paths.location(target).read_text() == '{"step": 1}\n{"step": 2}\n'
        if not gcsfs_retries:
            assert any("retrying in" in r.getMessage() for r in caplog.records)
    finally:
        for emulator in [own, *restarted]:
            emulator.stop()
        gcsfs.GCSFileSystem.clear_instance_cache()
