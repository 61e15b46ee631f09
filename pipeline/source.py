"""Reading a video's bytes: local paths stay paths; remote files and archive members are read
into memory (tar members by byte range, zip members through zipfile), never extracted to disk,
so a member's name never becomes a path on this machine."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

from pipeline import errors
from pipeline.records import VideoTask
from pipeline.uris import filesystem, network_errors, redact_uri, with_retries

Source = str | io.BytesIO


def raise_listing_problem(task: VideoTask) -> None:
    """Re-raise, as its typed error, a problem the archive listing found for ``task``.

    ``task.problem`` is ``"<error_type>: <message>"`` (see ``pipeline.archive``).
    """
    if not task.problem:
        return
    kind, _, message = task.problem.partition(": ")
    raise errors.error_class(kind)(message)


def read_source(task: VideoTask, storage_options: Mapping[str, Any] | None = None) -> Source:
    """A local path or an in-memory file with the video's bytes.

    Raises:
        EmptyFileError: zero bytes.
        TruncatedError: a tar member whose data is cut short by the end of the shard.
        CorruptArchiveError: a zip member failing its CRC or decompression, an unreadable zip.
        SourceReadError: any other read failure (missing object, permission, I/O).
        UnsafeMemberError: (and any other listing problem) re-raised from the listing.
    """
    raise_listing_problem(task)
    fs, path = filesystem(task.source, storage_options)
    uri = redact_uri(task.video_uri)
    try:
        if task.container == "tar":
            start = int(task.data_offset or 0)
            data = (
                with_retries(
                    lambda: fs.cat_file(path, start=start, end=start + task.size), f"reading {uri}"
                )
                if task.size
                else b""
            )
            if len(data) < task.size:
                raise errors.TruncatedError(
                    f"tar member {uri} holds {len(data)} of its {task.size} bytes "
                    "(the shard is cut)"
                )
        elif task.container == "zip":
            data = _read_zip_member(fs, path, task.member or "", uri)
        elif "local" in _protocols(fs) or "file" in _protocols(fs):
            if fs.size(path) == 0:
                raise errors.EmptyFileError("zero-byte file")
            return path
        else:
            data = with_retries(lambda: fs.cat_file(path), f"reading {uri}")
    except errors.VideoError:
        raise
    except (OSError, KeyError, EOFError, *network_errors()) as err:
        raise errors.SourceReadError(f"cannot read {uri}: {redact_uri(str(err))}") from None
    if not data:
        raise errors.EmptyFileError("zero-byte file")
    return io.BytesIO(data)


def _read_zip_member(fs, path: str, member: str, uri: str) -> bytes:
    def read() -> bytes:
        with fs.open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            return zf.read(member)

    try:
        return with_retries(read, f"reading {uri}")
    # zipfile raises BadZipFile (bad CRC, bad header), zlib.error (corrupt deflate data),
    # NotImplementedError (unknown compression) and RuntimeError (encrypted member).
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
        raise errors.CorruptArchiveError(f"cannot read {uri}: {err}") from None


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return tuple(proto) if isinstance(proto, (tuple, list)) else (proto,)
