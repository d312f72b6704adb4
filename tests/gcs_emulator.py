"""A local Cloud Storage emulator (gcp-storage-emulator from PyPI) for the gs:// tests.

Every client the programs use is pointed at it by environment variables, which subprocesses
inherit:
- gcsfs (etils.epath's gs:// backend here): STORAGE_EMULATOR_HOST.
- TensorStore (Orbax's array files): TENSORSTORE_GCS_HTTP_URL, plus a dummy bearer token through
  GOOGLE_AUTH_TOKEN_FOR_TESTING so it does not look for real credentials.
gcs_emulator_server.py adds the generation headers the emulator leaves out of its reads.
TensorFlow's own GCS client (tf.io.gfile, tf.summary, TFRecord readers) has its endpoint compiled
in and cannot be pointed at an emulator; tests/gcs_test.py says which layers that leaves out.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BUCKET = "test-bucket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_environment(endpoint: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": endpoint,
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "EPATH_USE_TF": "0",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


class Emulator:
    """The emulator as a child process with one bucket, BUCKET."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or _free_port()  # a given port: a restart where clients expect it
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # Its log goes to a file: an unread pipe fills up and blocks the emulator's one thread
        # the first time it prints a traceback (for example when a client drops a connection).
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("gcs_emulator_server.py")), "start",
             "--host", "127.0.0.1", "--port", str(self.port), "--in-memory", "--default-bucket",
             BUCKET, "-q"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/storage/v1/b/{BUCKET}", timeout=2)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the GCS emulator did not start: " + self.log_tail())
                time.sleep(0.2)

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def object_names(endpoint: str, prefix: str) -> list[str]:
    """Names of the objects under `prefix` in BUCKET, asked of the emulator directly (no client
    cache in between: for polling what another process has written)."""
    import json
    import urllib.parse

    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{endpoint}/storage/v1/b/{BUCKET}/o?{query}", timeout=10) as r:
        return [item["name"] for item in json.load(r).get("items", [])]
