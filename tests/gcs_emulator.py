"""A local Cloud Storage emulator (gcp-storage-emulator from PyPI) for the gs:// tests.

Every client the programs use is pointed at it by environment variables, which subprocesses
inherit:
- gcsfs (etils.epath's gs:// backend here): STORAGE_EMULATOR_HOST.
- TensorStore (Orbax's array files): TENSORSTORE_GCS_HTTP_URL, plus a dummy bearer token through
  GOOGLE_AUTH_TOKEN_FOR_TESTING so it does not look for real credentials.
TensorFlow's own GCS client (tf.io.gfile, tf.summary, TFRecord readers) has its endpoint compiled
in and cannot be pointed at an emulator; tests/gcs_test.py says which layers that leaves out.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

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

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--in-memory", "--default-bucket", BUCKET, "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/storage/v1/b/{BUCKET}", timeout=2)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the GCS emulator did not start: "
                                       + self.process.stderr.read().decode(errors="replace")[-2000:])
                time.sleep(0.2)

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
