"""Object-store locations checked before any compute, and writes retried through short outages.

Every program calls `check_locations` once, right after parsing its flags, with each location
it was given (docs/design.md, section 14). For the gs:// ones it asks Cloud Storage directly
(its JSON API, through the endpoint gcsfs uses: $STORAGE_EMULATOR_HOST or storage.googleapis.com),
with one deadline for all of them ($LFCSR_GCS_CHECK_TIMEOUT_S, 30 s by default), so that an
unreachable host, missing or refused credentials, a missing bucket and a missing input each end
the program at once with one line naming the URI and what to do, instead of a retry loop and a
traceback after the first step compiled. The clients that do the work (gcsfs, TensorStore) are
not involved: each would retry for about 30 s before failing, in its own words.

`retry_transient` wraps one upload: a connection failure or a 5xx/429 answer is retried with
exponential backoff (gcsfs retries too, for about 30 s; this outlasts a longer restart).
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import time
import urllib.parse
from typing import Any, Callable, Iterable, TypeVar

from lfcsr_jax.errors import UserError

TIMEOUT_ENV = "LFCSR_GCS_CHECK_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 30.0
LOGIN_HINT = ("run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
              "to a service-account key file")
_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
T = TypeVar("T")


class ObjectStoreError(UserError):
    """A gs:// location that cannot be used; the message names the URI and the remedy."""


def check_locations(locations: Iterable[tuple[str, str, bool]]) -> None:
    """Checks every (flag, uri, must_exist) whose uri is gs://...; others are skipped. Each
    bucket must exist and be accessible; with must_exist, the object (or a folder of that name)
    too. Raises ObjectStoreError for the first failure."""
    remote = [(flag, uri.rstrip("/"), must) for flag, uri, must in locations
              if isinstance(uri, str) and uri.startswith("gs://")]
    if not remote:
        return
    deadline = time.monotonic() + timeout_s()
    endpoint = endpoint_url()
    first_flag, first_uri, _ = remote[0]
    session = _session(f"{first_flag}={first_uri}")  # first: finding credentials is local
    _resolve_host(endpoint, f"{first_flag}={first_uri}", deadline)
    buckets: set[str] = set()
    for flag, uri, must_exist in remote:
        shown = f"{flag}={uri}"
        bucket, name = split_uri(uri, shown)
        if bucket not in buckets:
            _check_bucket(session, endpoint, bucket, shown, deadline)
            buckets.add(bucket)
        if must_exist and name:
            _check_object(session, endpoint, bucket, name, shown, deadline)


# Config fields a run writes to (only their bucket must exist); every other gs:// field is read.
_CONFIG_OUTPUTS = ("input.lr_cache_dir", "input.tfds_data_dir", "train.tensorboard_dir")


def config_locations(config: Any, prefix: str = "") -> list[tuple[str, str, bool]]:
    """(--config.FIELD, uri, must_exist) for every gs:// string field of a (nested) config."""
    found = []
    items = config.items() if hasattr(config, "items") else []
    for key, value in items:
        field = f"{prefix}{key}"
        if hasattr(value, "items"):
            found += config_locations(value, f"{field}.")
        elif isinstance(value, str) and value.startswith("gs://"):
            found.append((f"--config.{field}", value, field not in _CONFIG_OUTPUTS))
    return found


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: give a positive number of seconds")
    return value


def endpoint_url() -> str:
    """Where gcsfs sends its requests (the same rule as gcsfs: an emulator when set)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator and emulator != "default":
        return emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
    return "https://storage.googleapis.com"


def split_uri(uri: str, shown: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ('bucket', 'a/b')."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket:
        raise ObjectStoreError(f"{shown}: no bucket name in the URI (gs://BUCKET/PATH)")
    return bucket, name


def _remaining(deadline: float, shown: str, endpoint: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timeout_error(shown, endpoint)
    return left


def _timeout_error(shown: str, endpoint: str) -> ObjectStoreError:
    return ObjectStoreError(
        f"{shown}: no answer from Cloud Storage at {endpoint} within {timeout_s():g} s; check the "
        f"network (or raise {TIMEOUT_ENV})")


def _resolve_host(endpoint: str, shown: str, deadline: float) -> None:
    """A name lookup bounded by the deadline (getaddrinfo itself has no timeout)."""
    parts = urllib.parse.urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    pool.shutdown(wait=False)
    try:
        future.result(timeout=_remaining(deadline, shown, endpoint))
    except concurrent.futures.TimeoutError as e:
        raise _timeout_error(shown, endpoint) from e
    except socket.gaierror as e:
        raise ObjectStoreError(
            f"{shown}: cannot resolve the Cloud Storage host {host!r} ({e.strerror}); check the "
            "network and DNS" + (", and STORAGE_EMULATOR_HOST" if _which(endpoint) else "")) from e


def _which(endpoint: str) -> str:
    return "STORAGE_EMULATOR_HOST" if endpoint != "https://storage.googleapis.com" else ""


def _session(shown: str) -> Any:
    """An HTTP session with the credentials gcsfs would use; none for an emulator."""
    import requests  # pylint: disable=import-outside-toplevel

    if _which(endpoint_url()):
        return requests.Session()
    # pylint: disable=import-outside-toplevel
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=_SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise ObjectStoreError(f"{shown}: no Google Cloud credentials found ({_first_line(e)}); "
                               f"{LOGIN_HINT}") from e
    return AuthorizedSession(credentials)


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _get(session: Any, url: str, shown: str, endpoint: str, deadline: float, **params) -> Any:
    """One GET, its failures as ObjectStoreError; returns the response (any status)."""
    import google.auth.exceptions  # pylint: disable=import-outside-toplevel
    import requests  # pylint: disable=import-outside-toplevel

    left = _remaining(deadline, shown, endpoint)
    try:
        return session.get(url, params=params or None, timeout=(left, left))
    except requests.exceptions.Timeout as e:
        raise _timeout_error(shown, endpoint) from e
    except requests.exceptions.ConnectionError as e:
        refused = "refused" in str(e).lower()
        raise ObjectStoreError(
            f"{shown}: cannot connect to Cloud Storage at {endpoint} "
            f"({'connection refused' if refused else _first_line(e)}); check the network"
            + (" and STORAGE_EMULATOR_HOST (is the emulator running?)" if _which(endpoint)
               else "")) from e
    except google.auth.exceptions.RefreshError as e:
        raise ObjectStoreError(f"{shown}: the Google Cloud credentials were refused "
                               f"({_first_line(e)}); {LOGIN_HINT}") from e


def _check_status(response: Any, shown: str, what: str) -> None:
    if response.status_code == 401:
        raise ObjectStoreError(f"{shown}: the Google Cloud credentials were refused for {what} "
                               f"(HTTP 401); {LOGIN_HINT}")
    if response.status_code == 403:
        raise ObjectStoreError(f"{shown}: the credentials in use may not access {what} (HTTP 403);"
                               " grant them storage access to the bucket, or log in as another "
                               f"account: {LOGIN_HINT}")
    if response.status_code >= 400 and response.status_code != 404:
        raise ObjectStoreError(f"{shown}: Cloud Storage answered HTTP {response.status_code} for "
                               f"{what}; try again later")


def _check_bucket(session: Any, endpoint: str, bucket: str, shown: str, deadline: float) -> None:
    """A one-item listing, not the bucket's metadata: that needs storage.buckets.get, which the
    usual object roles (roles/storage.objectAdmin) do not grant; listing needs only
    storage.objects.list, which every run needs anyway."""
    response = _get(session, f"{endpoint}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o",
                    shown, endpoint, deadline, maxResults="1", fields="items/name")
    _check_status(response, shown, f"bucket gs://{bucket}")
    if response.status_code == 404:
        raise ObjectStoreError(f"{shown}: bucket gs://{bucket} does not exist; check the name, or "
                               f"create it (gcloud storage buckets create gs://{bucket})")


def _check_object(session: Any, endpoint: str, bucket: str, name: str, shown: str,
                  deadline: float) -> None:
    """The object itself, or any object below NAME/ (a folder, such as an export)."""
    base = f"{endpoint}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
    response = _get(session, f"{base}/{urllib.parse.quote(name, safe='')}", shown, endpoint,
                    deadline)
    _check_status(response, shown, f"gs://{bucket}/{name}")
    if response.status_code == 200:
        return
    listing = _get(session, base, shown, endpoint, deadline, prefix=name.rstrip("/") + "/",
                   maxResults="1")
    _check_status(listing, shown, f"gs://{bucket}/{name}")
    if listing.status_code == 200 and listing.json().get("items"):
        return
    raise ObjectStoreError(f"{shown}: no such file or folder (no object gs://{bucket}/{name} and "
                           "none below it: it does not exist); check the path (gcloud storage ls "
                           f"gs://{bucket}/{os.path.dirname(name)})")


# ----------------------------------------------------------------------------- retries


def is_transient(error: BaseException) -> bool:
    """Connection failures, timeouts and 5xx/429 answers: worth another try. A 404 or 403 is
    not (the write would fail the same way again)."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in chain:
        status = getattr(e, "code", None) or getattr(e, "status", None)
        if isinstance(status, int) and (status >= 500 or status in (408, 429)):
            return True
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
            return True
        if type(e).__module__.startswith("aiohttp") and "Connect" in type(e).__name__:
            return True
    return False


def retry_transient(fn: Callable[[], T], what: str, attempts: int = 5,
                    first_delay_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """fn(), retried after a transient failure with delays 2, 4, 8, 16 s (then it raises)."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 (gcsfs/aiohttp raise many types)
            if attempt == attempts or not is_transient(error):
                raise
            from absl import logging  # pylint: disable=import-outside-toplevel

            logging.warning("%s failed (%s: %s); retrying in %g s (attempt %d of %d)", what,
                            type(error).__name__, _first_line(error), delay, attempt + 1,
                            attempts)
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
