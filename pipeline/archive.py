"""Listing a video archive into ``VideoTask``s: folders, globs, manifests, tar and zip shards.

Works on any fsspec filesystem. Files whose extension is not a video extension are skipped and
counted (``ArchiveListing.skipped``); anything with a video extension becomes a task, so a
broken file still gets its own ``videos`` row.
"""

from __future__ import annotations

import io
import logging
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.records import VideoTask, make_video_id
from pipeline.uris import filesystem, redact_uri

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
    ".3gp", ".ogv", ".y4m",
})
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".txt", ".lst")


class ArchiveError(ValueError):
    """The archive URI cannot be listed at all (missing, unreadable, empty)."""


@dataclass
class ArchiveListing:
    tasks: list[VideoTask] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def is_video_name(name: str) -> bool:
    return posixpath.splitext(name.lower())[1] in VIDEO_EXTENSIONS


def unsafe_member_name(name: str) -> bool:
    """True when a member name could escape a directory it is extracted or mapped into."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def list_archive(uri: str, storage_options: Mapping[str, Any] | None = None) -> ArchiveListing:
    """List every video task of the archive at ``uri``.

    Raises:
        ArchiveError: the URI does not exist, cannot be read, or holds no video at all.
    """
    fs, path = filesystem(uri, storage_options)
    listing = ArchiveListing()
    lower = path.lower()
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    try:
        if any(ch in path for ch in "*?["):
            files = sorted(fs.glob(path))
            if not files:
                raise ArchiveError(f"no file matches {redact_uri(uri)}")
            for f in files:
                _list_file(fs, prefix + f, f, listing, uri)
        elif lower.endswith(MANIFEST_EXTENSIONS) and fs.isfile(path):
            _list_manifest(fs, path, prefix, listing, storage_options)
        elif fs.isdir(path):
            for f in sorted(fs.find(path)):
                rel = posixpath.relpath(f, path)
                _list_file(fs, prefix + f, f, listing, uri, member_key=rel)
        elif fs.isfile(path):
            _list_file(fs, prefix + path, path, listing, uri)
        else:
            raise ArchiveError(f"input {redact_uri(uri)} does not exist")
    except (OSError, PermissionError) as err:
        raise ArchiveError(f"cannot list input {redact_uri(uri)}: {err}") from None
    if not listing.tasks:
        raise ArchiveError(f"input {redact_uri(uri)} holds no video (skipped: {listing.skipped})")
    return listing


def _list_file(fs, full_uri: str, path: str, listing: ArchiveListing, archive_uri: str,
               member_key: str | None = None, label: str | None = None) -> None:
    lower = path.lower()
    if lower.endswith(".tar"):
        _list_tar(fs, full_uri, path, listing, label)
    elif lower.endswith(".zip"):
        _list_zip(fs, full_uri, path, listing, label)
    elif is_video_name(path):
        size = int(fs.size(path))
        key = member_key if member_key is not None else path
        listing.tasks.append(VideoTask(make_video_id(archive_uri, key, size), full_uri, full_uri,
                                       size, label=label))
    else:
        listing.skip("not a video")


def _list_tar(fs, full_uri: str, path: str, listing: ArchiveListing, label: str | None) -> None:
    """Read tar headers only (members are located by offset, never extracted)."""
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError) as err:
        log.warning("corrupt tar %s: %s", redact_uri(full_uri), err)
        listing.tasks.append(VideoTask(make_video_id(full_uri, "", 0), full_uri, full_uri, 0,
                                       container="tar", member="", label=label,
                                       problem=f"SourceRead: corrupt tar: {err}"))
        return
    for m in members:
        if not m.isfile():
            continue
        if not is_video_name(m.name):
            listing.skip("not a video")
            continue
        problem = f"UnsafeMemberName: {m.name!r} escapes the archive" if unsafe_member_name(m.name) else None
        listing.tasks.append(VideoTask(
            make_video_id(full_uri, m.name, m.size), f"{full_uri}#{m.name}", full_uri, m.size,
            container="tar", member=m.name, data_offset=m.offset_data, label=label, problem=problem))


def _list_zip(fs, full_uri: str, path: str, listing: ArchiveListing, label: str | None) -> None:
    try:
        with fs.open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, EOFError) as err:
        listing.tasks.append(VideoTask(make_video_id(full_uri, "", 0), full_uri, full_uri, 0,
                                       container="zip", member="", label=label,
                                       problem=f"SourceRead: corrupt zip: {err}"))
        return
    for info in infos:
        if info.is_dir():
            continue
        if not is_video_name(info.filename):
            listing.skip("not a video")
            continue
        problem = (f"UnsafeMemberName: {info.filename!r} escapes the archive"
                   if unsafe_member_name(info.filename) else None)
        listing.tasks.append(VideoTask(
            make_video_id(full_uri, info.filename, info.file_size), f"{full_uri}#{info.filename}",
            full_uri, info.file_size, container="zip", member=info.filename, label=label,
            problem=problem))


def _manifest_rows(fs, path: str) -> Iterator[tuple[str, str | None]]:
    lower = path.lower()
    with fs.open(path, "rb") as f:
        data = f.read()
    if lower.endswith((".txt", ".lst")):
        for line in data.decode().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                yield line.strip(), None
        return
    table = pq.read_table(io.BytesIO(data)) if lower.endswith(".parquet") else pacsv.read_csv(io.BytesIO(data))
    names = table.column_names
    uri_col = next((c for c in ("uri", "path", "video", "url") if c in names), names[0])
    labels = table.column("label").to_pylist() if "label" in names else [None] * table.num_rows
    for uri, label in zip(table.column(uri_col).to_pylist(), labels):
        yield str(uri), (None if label is None else str(label))


def _list_manifest(fs, path: str, prefix: str, listing: ArchiveListing,
                   storage_options: Mapping[str, Any] | None) -> None:
    base = posixpath.dirname(path)
    for entry, label in _manifest_rows(fs, path):
        if "://" in entry:
            efs, epath = filesystem(entry, storage_options)
            eprefix = entry.split("://", 1)[0] + "://"
            eprefix = "" if eprefix == "file://" else eprefix
        else:
            efs, epath, eprefix = fs, entry if entry.startswith("/") else posixpath.join(base, entry), prefix
        full = eprefix + epath
        if not efs.exists(epath):
            listing.tasks.append(VideoTask(make_video_id(full, "", 0), full, full, 0, label=label,
                                           problem=f"SourceRead: {redact_uri(full)} does not exist"))
            continue
        _list_file(efs, full, epath, listing, full, member_key="", label=label)
