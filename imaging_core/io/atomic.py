"""Write-then-rename, so a crash never leaves a half-written file behind.

The temp file comes from mkstemp (0600); before the rename it gets the mode a
plain ``open()`` would have given it (0666 less the umask), unless the caller
asks for one (keys, secure-aggregation state: 0600).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    # Linux states it without changing it (os.umask would, for a moment, for every thread)
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "", mode: int | None = None):
    """Yield a temp path beside ``final``; rename it over ``final`` on success.

    ``suffix`` keeps extension-sensitive writers (nibabel: .nii.gz) happy;
    ``mode`` (e.g. 0o600) overrides the umask-derived file mode.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(final: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    with atomic_path(final, mode=mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a fully written directory ``tmp`` into place at ``final``.

    An existing ``final`` is renamed aside first and deleted only once the new
    one is in place, so a crash leaves either the old or the new directory."""
    import secrets
    import shutil
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{secrets.token_hex(4)}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
