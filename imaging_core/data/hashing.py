"""Content hashes of input files, memoised by (size, mtime) so a restart does
not re-read every study just to find that nothing changed."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ImagingError
from ..io.atomic import write_bytes_atomic

_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


class HashMemo:
    """sha256 of a file or a directory tree (DICOM series), cached in a JSON file."""

    def __init__(self, memo_file: str | os.PathLike | None):
        self.memo_file = Path(memo_file) if memo_file else None
        self._memo: dict[str, dict] = {}
        self._dirty = False
        if self.memo_file and self.memo_file.is_file():
            try:
                self._memo = json.loads(self.memo_file.read_text())
            except (json.JSONDecodeError, OSError):
                self._memo = {}  # a damaged memo only costs re-hashing

    def _one(self, f: Path) -> str:
        st = f.stat()
        k = str(f.resolve())
        hit = self._memo.get(k)
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return hit["sha256"]
        digest = _file_sha256(f)
        self._memo[k] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self._dirty = True
        return digest

    def digest(self, path: str | os.PathLike) -> str:
        path = Path(path)
        if not path.exists():
            raise ImagingError(path, "file not found")
        files = _files_of(path)
        if not files:
            raise ImagingError(path, "empty directory")
        if len(files) == 1 and files[0] == path:
            return self._one(path)
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(path)).encode() + b"\0" + self._one(f).encode())
        return h.hexdigest()

    def save(self) -> None:
        if self.memo_file and self._dirty:
            write_bytes_atomic(self.memo_file, json.dumps(self._memo).encode())
            self._dirty = False
