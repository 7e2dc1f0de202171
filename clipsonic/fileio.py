"""Atomic file writes (a reader never sees a half-written file, a crash leaves the old one) and
lock files (one holder at a time, never left held by a dead process)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_TEMPORARY = ".tmp"  # in the name of atomic_path's temporary files, between mkstemp's suffix and the target's


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk; some platforms
    # (and some filesystems) cannot open a directory, which is harmless to skip.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    The temporary name keeps the suffix so writers that infer a format from it (soundfile,
    ffmpeg) work. On an exception the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f"{_TEMPORARY}{target.suffix}",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def temporary_files(folder: str | os.PathLike) -> list[Path]:
    """The temporary files of `atomic_path` in `folder`: writes in progress, or left by a killed writer."""
    return sorted(path for path in Path(folder).glob(f".*{_TEMPORARY}*") if path.is_file())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as its lock file says (a holder writes both just after locking)."""

    pid: int | None
    started: str | None = None  # local time, "YYYY-MM-DD HH:MM:SS"

    @property
    def process(self) -> str:
        return "an unknown process" if self.pid is None else f"process {self.pid}"

    def __str__(self) -> str:
        return self.process + (f" (started {self.started})" if self.started else "")


class LockHeld(Exception):
    """A live process holds the lock (past the time the caller would wait)."""

    def __init__(self, path: Path, holder: LockHolder) -> None:
        super().__init__(f"{path}: held by {holder}")
        self.path, self.holder = path, holder


def _try_lock(descriptor: int) -> bool:
    import fcntl  # POSIX only (Linux, macOS): elsewhere the ImportError says why there is no lock

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(descriptor: int) -> LockHolder:
    words = os.pread(descriptor, 256, 0).decode(errors="replace").split(maxsplit=1)
    pid = int(words[0]) if words and words[0].isdigit() else None
    started = words[1].strip() if len(words) > 1 else ""
    return LockHolder(pid, started or None)


def _holder_of(descriptor: int) -> LockHolder | None:
    """Who holds the lock on `descriptor`, or None when it turned out to be free (then it is ours).

    A holder writes its pid just after locking and erases it just before unlocking, so an empty
    file means one of those instants: look again for a moment."""
    for _ in range(20):
        holder = _read_holder(descriptor)
        if holder.pid is not None:
            return holder
        time.sleep(0.05)
        if _try_lock(descriptor):
            return None
    return holder


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, timeout: float = 0.0, poll: float = 0.2,
                   waiting: Callable[[LockHolder], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing) for the block.

    The lock is an flock, which the kernel drops when its holder dies however it dies (kill -9,
    OOM), so a lock file left by a dead process is simply taken over. While held, the file says
    this process's pid and when it took the lock. A live holder is waited for, retrying every
    `poll` s, at most `timeout` s (0: not at all; `waiting(holder)` is called once when a wait
    starts); after that `LockHeld` names the holder.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(descriptor) and (holder := _holder_of(descriptor)) is not None:
            deadline = time.monotonic() + timeout
            if timeout > 0 and waiting is not None:
                waiting(holder)
            while not _try_lock(descriptor):
                if time.monotonic() >= deadline:
                    latest = _read_holder(descriptor)  # the holder may have changed while we waited
                    raise LockHeld(target, latest if latest.pid is not None else holder)
                time.sleep(poll)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)  # so that a later waiter never names a finished process
    finally:
        os.close(descriptor)  # releases the flock, as the kernel does when the holder dies
