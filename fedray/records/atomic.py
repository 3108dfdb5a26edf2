"""The one way the driver writes a run folder's files: whole or not at all, and a full disk said in one line.

`write_atomic` writes a unique temporary file beside the target (two processes, or a writer that died
half-way, never share one), flushes and fsyncs it, renames it over the target and fsyncs the folder,
so after a crash or power loss the name holds the old bytes or the new ones, never a torn file; the
temporary is removed on any failure. `append_line` is for logs read line by line (rounds.jsonl): on
failure it cuts the file back to where it was, and readers still drop a torn last line (a crash can
leave one). `DiskFull` is ENOSPC (or a quota) from any of them, with the path and the free bytes.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(RuntimeError):
    """A run-folder write found no space; the message is one line naming the path and the free bytes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        super().__init__(f"no space left on the file system of {self.path} ({free_bytes(self.path)} bytes free)")


def free_bytes(path: Path) -> int:
    """Free bytes of the file system holding `path` (its nearest existing folder)."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return -1


@contextmanager
def no_space_as_disk_full(path: str | os.PathLike) -> Iterator[None]:
    """ENOSPC/EDQUOT from the block's writes to `path` become `DiskFull` (other errors pass as they are)."""
    try:
        yield
    except OSError as err:
        if err.errno in NO_SPACE:
            raise DiskFull(path) from None
        raise


def write_atomic(path: str | os.PathLike, data: bytes, previous: Optional[Path] = None) -> None:
    """`path` holds `data`, or (on any failure) what it held before. `previous`: the old file is first
    renamed there (one earlier version kept, for a checkpoint to fall back on), once the new bytes are
    safely on disk, so a full disk leaves the old file under its own name."""
    path = Path(path)
    with no_space_as_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # pid + random: unique per writer; O_EXCL: never someone else's file; mode 0o666 honours the umask
        # (mkstemp's 0o600 would make run folders unreadable to the rest of a team).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if previous is not None and path.exists():
                os.replace(path, previous)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        fsync_folder(path.parent)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append `line` and a newline, on disk when this returns; on failure the file is cut back to its
    old length, so a full disk leaves no half line behind."""
    path = Path(path)
    with no_space_as_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                data = memoryview(line.encode() + b"\n")
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # needs no new block: a full disk allows it
                raise
        finally:
            os.close(fd)


def fsync_folder(folder: Path) -> None:
    """A rename is durable once its folder is fsynced (POSIX); some file systems refuse: then skip."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno in NO_SPACE:
            raise
    finally:
        os.close(fd)
