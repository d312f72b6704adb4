"""Starts gcp-storage-emulator, adding the generation headers real GCS sends on object reads.

Cloud Storage answers every media download with `x-goog-generation` (and `x-goog-metageneration`);
TensorStore's OCDBT reads the generation of `manifest.ocdbt` from that header and fails with
"Malformed StorageGeneration" without it. gcp-storage-emulator (2026.7) leaves those headers
out. This launcher adds them to its download handler and then runs the emulator unchanged;
everything else is the emulator's own behaviour.

Known gap of the emulator that stays: it ignores `ifGenerationMatch` preconditions, so the
conditional writes TensorStore uses against concurrent writers always succeed here.
"""

from __future__ import annotations

import sys

from gcp_storage_emulator.handlers import objects

_emulator_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    _emulator_download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 (not found: the emulator has set the 404 already)
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


# Before the server module builds its routing table from `objects.download`.
objects.download = _download_with_generation

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    sys.exit(main(sys.argv[1:]))
