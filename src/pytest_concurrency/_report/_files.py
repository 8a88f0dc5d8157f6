"""Writing report files so that no reader ever sees half of one, and no link is followed.

Every report (JSON, baseline, HTML, CSV) is written to a temporary file of its own in the
target's directory, created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a name nobody can
guess in advance, flushed to disk and then renamed over the target in one step. A failed
write leaves the previous report as it was; a symbolic link planted where a temporary file
used to be named (``NAME.json.partial``) is never opened; two writers never share a
temporary file. A baseline's read-merge-write also holds an exclusive lock on a sibling
file (``NAME.json.lock``, there only while a save holds it), so two sessions saving at
once both keep their storms.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_TIMEOUT", "check_directory", "locked", "write_atomic"]

#: Seconds a baseline save waits for another process's save of the same baseline.
LOCK_TIMEOUT = 60.0

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
#: Characters of the target's name a temporary file's name repeats.
_SHOWN = 64


def _temporary(target: Path) -> tuple[int, Path]:
    """A new file beside *target*, open for writing, that no other writer can have named."""
    for _ in range(100):
        # Cut to fit: a target named near the file system's limit still gets a temporary.
        name = f".{target.name[:_SHOWN]}.{os.getpid()}.{secrets.token_hex(6)}.partial"
        candidate = target.with_name(name)
        try:
            # 0o666 less the umask, as a report written with open() would have.
            return os.open(candidate, _NEW_FILE, 0o666), candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target.parent))


def _sync_directory(directory: Path) -> None:
    # The rename is durable once the directory is on disk too (not possible everywhere).
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Replace *path* with *data* (text is UTF-8) in one step; parent directories are made.

    The previous file stays whole until the new one is complete on disk; on any error the
    temporary file is removed and the error raised. A symbolic link at *path* is replaced,
    never written through.
    """
    target = Path(path)
    # Encoding fails before anything is touched (a lone surrogate, say).
    payload = data.encode("utf-8") if isinstance(data, str) else data
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(target))
    fd, temporary = _temporary(target)
    try:
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _sync_directory(target.parent)
    return target


def check_directory(path: str | os.PathLike[str]) -> Path:
    """Check that *path* can be written by :func:`write_atomic`; :class:`OSError` if not.

    What writing needs is a directory in which a new file can be made (the target is
    replaced, not opened): the parents are made and a temporary file created and removed.
    """
    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        raise IsADirectoryError(f"{target} is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    if len(os.fsencode(target.name)) > _name_max(target.parent):
        raise OSError(errno.ENAMETOOLONG, "File name too long", str(target))
    fd, temporary = _temporary(target)
    os.close(fd)
    temporary.unlink()
    return target


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return 255


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], *, timeout: float = LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold an exclusive lock for *path* (on ``PATH.lock``) while the block runs.

    Only writers that take the same lock are kept out: this is for a read-merge-write of
    one file by several processes. The holder removes the lock file before it lets go,
    so a storage directory is left with its baselines only; a writer that locked a file
    already removed tries again on the new one. After *timeout* seconds of waiting,
    :class:`TimeoutError` names the lock file.
    """
    target = Path(path)
    lock_path = target.with_name(target.name + ".lock")
    target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
        try:
            _lock(fd, lock_path, max(0.0, deadline - time.monotonic()), timeout)
            try:
                held = os.path.samestat(os.fstat(fd), os.lstat(lock_path))
            except FileNotFoundError:
                held = False
        except BaseException:
            os.close(fd)
            raise
        if held:
            break
        # The previous holder removed this file after it was opened here: its lock guards
        # nothing now (another writer may have made and locked a new one).
        os.close(fd)
    try:
        yield target
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)  # closing the descriptor releases the lock


if sys.platform == "win32":  # pragma: no cover - the project runs its storms on POSIX

    def _lock(fd: int, lock_path: Path, wait: float, timeout: float) -> None:
        import msvcrt

        deadline = time.monotonic() + wait
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        errno.ETIMEDOUT, f"still locked after {timeout:g} s", str(lock_path)
                    ) from None
                time.sleep(0.05)

else:
    import fcntl

    def _lock(fd: int, lock_path: Path, wait: float, timeout: float) -> None:
        deadline = time.monotonic() + wait
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"another process has held it for {timeout:g} s",
                        str(lock_path),
                    ) from None
                # Another save of the same baseline takes milliseconds: poll briefly.
                time.sleep(pause)
                pause = min(0.05, pause * 2)
