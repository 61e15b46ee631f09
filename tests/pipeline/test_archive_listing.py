"""A local folder is listed with ``os.scandir``, every other filesystem with fsspec's ``ls``: both
give the same tasks, in the same order, for files, nested folders, files that are not videos and
symbolic links (to a file, to a folder, to nothing)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from pipeline import archive


def _tree(root: Path) -> Path:
    (root / "b" / "deeper").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"x" * 3)
    (root / "space name.webm").write_bytes(b"y" * 5)
    (root / "notes.txt").write_bytes(b"z")
    (root / "b" / "c.MKV").write_bytes(b"c" * 7)
    (root / "b" / "deeper" / "d.mov").write_bytes(b"d" * 11)
    (root / "link.mp4").symlink_to(root / "b" / "c.MKV")
    (root / "folder-link").symlink_to(root / "b")
    (root / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    return root


def _listing(uri: str) -> tuple[list[tuple], dict[str, int]]:
    skipped: Counter[str] = Counter()
    tasks = [
        (t.video_id, t.video_uri, t.size, t.problem) for t in archive.iter_archive(uri, {}, skipped)
    ]
    return tasks, dict(skipped)


def test_a_local_folder_lists_as_fsspec_lists_it(tmp_path, monkeypatch):
    root = _tree(tmp_path / "archive")
    fast = _listing(str(root))

    class NotLocal:  # every filesystem but the local one takes fsspec's path
        pass

    monkeypatch.setattr(archive, "LocalFileSystem", NotLocal)
    assert _listing(str(root)) == fast

    tasks, skipped = fast
    uris = [os.path.relpath(t[1], root) for t in tasks]
    # Sorted by name in each folder, depth first; the folder link is not walked (one more file
    # that is not a video) and the dangling link is its own row with its error.
    assert uris == [
        "a.mp4",
        "b/c.MKV",
        "b/deeper/d.mov",
        "dangling.mp4",
        "link.mp4",
        "space name.webm",
    ]
    assert [t[2] for t in tasks] == [3, 7, 11, 0, 7, 5]
    assert tasks[3][3].startswith("SourceRead: cannot stat")
    assert skipped == {"not a video": 2}
