"""Reading a video's bytes: local paths stay paths; remote files and archive members are read
into memory (tar members by byte range, zip members through zipfile), never extracted to disk."""

from __future__ import annotations

import io
import zipfile
from typing import Any, Mapping

from pipeline import errors
from pipeline.records import VideoTask
from pipeline.uris import filesystem, redact_uri

Source = str | io.BytesIO


def raise_listing_problem(task: VideoTask) -> None:
    """Re-raise, as its typed error, a problem the archive listing found for ``task``."""
    if not task.problem:
        return
    kind, _, message = task.problem.partition(": ")
    by_type = {cls.error_type: cls for cls in (errors.UnsafeMemberError, errors.SourceReadError)}
    raise by_type.get(kind, errors.SourceReadError)(message)


def read_source(task: VideoTask, storage_options: Mapping[str, Any] | None = None) -> Source:
    """A local path or an in-memory file with the video's bytes.

    Raises:
        EmptyFileError, SourceReadError, UnsafeMemberError.
    """
    raise_listing_problem(task)
    fs, path = filesystem(task.source, storage_options)
    try:
        if task.container == "tar":
            start = int(task.data_offset or 0)
            data = fs.cat_file(path, start=start, end=start + task.size) if task.size else b""
        elif task.container == "zip":
            with fs.open(path, "rb") as f, zipfile.ZipFile(f) as zf:
                data = zf.read(task.member)
        elif "local" in _protocols(fs):
            if fs.size(path) == 0:
                raise errors.EmptyFileError("zero-byte file")
            return path
        else:
            data = fs.cat_file(path)
    except errors.VideoError:
        raise
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as err:
        raise errors.SourceReadError(f"cannot read {redact_uri(task.video_uri)}: {err}") from None
    if not data:
        raise errors.EmptyFileError("zero-byte file")
    return io.BytesIO(data)


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return tuple(proto) if isinstance(proto, (tuple, list)) else (proto,)
