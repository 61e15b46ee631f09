"""fsspec access to archive and output URIs, and redaction of credentials for anything logged."""

from __future__ import annotations

import functools
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

_SECRET_KEYS = re.compile(r"(secret|password|passwd|token|key|credential|session)", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_QUERY_SECRET = re.compile(
    r"(?P<k>[?&](?:[^=&\s]*(?:signature|secret|token|password|key|credential)[^=&\s]*))=(?P<v>[^&\s]*)",
    re.IGNORECASE,
)
# user:secret@ without a scheme, as clients quote a path in their errors ("bucket name
# "KEY:SECRET@bucket" is invalid").
_BARE_USERINFO = re.compile(r"(?<![\w/:@.+%-])[\w.+%-]+:[^\s/@\"']+@(?=[\w.-])")
# Object stores whose fsspec filesystems take credentials only from storage_options: in their
# URIs a user:secret@ would be read as part of the bucket name (and echoed in errors).
_NO_USERINFO_PROTOCOLS = frozenset({"s3", "s3a", "s3n", "gs", "gcs"})
REDACTED = "***"
T = TypeVar("T")
log = logging.getLogger(__name__)


class CredentialsInURIError(PermissionError):
    """An object-store URI carries ``user:secret@``, which its filesystem cannot use."""


def filesystem(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and in-filesystem path for ``uri``.

    Raises:
        CredentialsInURIError: ``s3://KEY:SECRET@bucket/...`` (or gs://): credentials go in
            ``storage_options`` (``key``, ``secret``, ``token``), never in the URI.
    """
    match = _USERINFO.match(uri)
    protocol = match["scheme"][:-3].lower() if match else ""
    if match and ":" in match["userinfo"] and protocol in _NO_USERINFO_PROTOCOLS:
        raise CredentialsInURIError(
            f"{redact_uri(uri)}: credentials in an {match['scheme']} URI are not supported; "
            "give them in storage_options (key, secret, token) or the environment"
        )
    return url_to_fs(uri, **dict(storage_options or {}))


def join(base: str, *parts: str) -> str:
    """Join URI path segments with '/' whatever the filesystem."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def redact_uri(uri: str) -> str:
    """Hide user:password@ and secret-looking query parameters (signed URLs) in a URI."""
    uri = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", uri)
    uri = _BARE_USERINFO.sub(f"{REDACTED}@", uri)
    return _QUERY_SECRET.sub(lambda m: f"{m['k']}={REDACTED}", uri)


def redact(value: Any) -> Any:
    """Recursively redact credentials in URIs, and values of secret-looking keys, in ``value``."""
    if isinstance(value, str):
        return redact_uri(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _SECRET_KEYS.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


# Definite answers: retrying cannot change them.
_PERMANENT_OS_ERRORS = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


@functools.cache
def network_errors() -> tuple[type[BaseException], ...]:
    """Errors of the object-store and HTTP clients under fsspec that are NOT ``OSError``s:
    botocore's connection and HTTP-client errors (s3fs lets them through once its own and
    botocore's retries are spent: endpoint unreachable, connection closed) and aiohttp's
    (server disconnected, payload cut, HTTP error statuses from fsspec's HTTP filesystem).
    Use it in ``except`` clauses next to ``OSError``; :func:`is_transient` says which to retry.
    """
    found: list[type[BaseException]] = []
    try:
        from botocore import exceptions as botocore_errors

        found += [botocore_errors.ConnectionError, botocore_errors.HTTPClientError]
    except ImportError:
        pass
    try:
        import aiohttp

        found += [
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
        ]
    except ImportError:
        pass
    return tuple(found)


def is_transient(err: BaseException) -> bool:
    """Whether retrying may help: I/O errors other than a missing or forbidden path, timeouts,
    lost connections and 5xx/429 answers (``SlowDown``, ``ServiceUnavailable``)."""
    if isinstance(err, _PERMANENT_OS_ERRORS):
        return False
    status = getattr(err, "status", None)  # aiohttp.ClientResponseError: an HTTP answer
    if isinstance(status, int) and isinstance(err, network_errors()):
        return status >= 500 or status == 429
    return isinstance(err, (OSError, TimeoutError) + network_errors())


def with_retries(fn: Callable[[], T], what: str, attempts: int = 5, base_delay_s: float = 0.5) -> T:
    """Call ``fn``, retrying transient I/O errors (:func:`is_transient`: connection resets and
    refusals, 5xx from object stores, timeouts) with exponential backoff and jitter; the last
    error propagates. ``what`` and the errors are logged redacted."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (OSError, TimeoutError, *network_errors()) as err:
            if attempt == attempts or not is_transient(err):
                raise
            delay = base_delay_s * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning(
                "%s failed (%s: %s); retry %d/%d in %.1f s",
                redact_uri(what),
                type(err).__name__,
                redact_uri(str(err)),
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


_SIGNING_PARAM = re.compile(
    r"^(x-amz-|x-goog-|signature$|sig$|se$|sp$|sv$|st$|token$|expires$|"
    r"key-pair-id$|policy$)",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=256)  # one archive URI per listed video: the same few, hashed often
def canonical_uri(uri: str) -> str:
    """``uri`` without credentials or URL-signing parameters: the identity of the object, so an
    id hashed from it survives re-signed URLs and rotated credentials."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if not parts.scheme or "://" not in uri:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not _SIGNING_PARAM.match(k)
        ]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss", "memory"}


def write_bytes_atomic(
    uri: str, data: bytes, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write ``data`` to ``uri`` so that readers see either the old file or the whole new one.

    Raises:
        OSError: the filesystem refused the write (the temporary file is removed).
    """
    fs, path = filesystem(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not _renames_atomically(fs):
        # Object stores publish an object only when its single PUT completes.
        fs.pipe_file(path, data)
        return
    # A hidden sibling: same folder, so the rename cannot cross filesystems.
    tmp_name = f".{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
    tmp = f"{parent}/{tmp_name}" if parent else tmp_name
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def _renames_atomically(fs) -> bool:
    # Path-based filesystems (local disk, sftp, hdfs) rename atomically within a folder; object
    # stores have no rename (mv = copy + delete) but an atomic PUT, so they get a direct write.
    if isinstance(fs, LocalFileSystem):
        return True
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return not protocols & _OBJECT_STORES
