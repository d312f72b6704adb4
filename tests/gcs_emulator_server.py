"""Starts gcp-storage-emulator with two things real GCS has and the emulator (2026.7) lacks.

* Generation headers on object reads. Cloud Storage answers every media download with
  `x-goog-generation` (and `x-goog-metageneration`); TensorStore's OCDBT reads the generation of
  `manifest.ocdbt` from that header and fails with "Malformed StorageGeneration" without it.
* The object move API (`POST b/{bucket}/o/{object}/moveTo/o/{destination}`), which gcsfs tries
  first for every `mv` (lfcsr_jax.paths.move_tree). The emulator answers it 501, and gcsfs
  retries that with exponential back-off before falling back to copy + delete: about 35 s per
  moved folder (tests/gcs_test.py's damaged-checkpoint test spent 36 s of its 37 there).
  Here a move is a copy and a delete inside the emulator, the same end state as on GCS.

Everything else is the emulator's own behaviour.

Known gap of the emulator that stays: it ignores `ifGenerationMatch` preconditions, so the
conditional writes TensorStore uses against concurrent writers always succeed here.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator import server, settings
from gcp_storage_emulator.exceptions import NotFound
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


def _move(request, response, storage, *args, **kwargs):
    bucket, source = request.params["bucket_name"], request.params["object_id"]
    try:
        moved = objects._copy(request.base_url, storage, bucket, source,  # pylint: disable=protected-access
                              bucket, request.params["dest_object_id"])
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    storage.delete_file(bucket, source)
    response.json(moved)


def _move_route(prefix: str) -> tuple[str, dict]:
    return (rf"^{prefix}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
            rf"(?P<dest_object_id>.*[^/]+)$", {server.POST: _move})


# Routes are matched in order at request time: the move routes go before the generic object
# route, which would otherwise take `.../o/a/moveTo/o/b` as an object named `a/moveTo/o/b`.
server.HANDLERS = (_move_route(settings.API_ENDPOINT), _move_route(""), *server.HANDLERS)
# The module global serves the calls from other handlers (objects.get with alt=media); the
# download route holds the function itself (the table is built at import), so it is replaced
# in the table too.
objects.download = _download_with_generation
server.HANDLERS = tuple(
    (regex, {method: (_download_with_generation if handler is _emulator_download else handler)
             for method, handler in handlers.items()})
    for regex, handlers in server.HANDLERS)

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    sys.exit(main(sys.argv[1:]))
