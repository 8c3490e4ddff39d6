"""Atomic file writes, shared by every package that writes a small file (manifests, scores, reports), and
the exclusive lock a long-running writer (an extraction, a training run) holds on its output.

The data goes to a temporary file in the target's folder, is fsynced, and is renamed over the target, and
the folder is fsynced: a reader sees the old file or the new one, never a half-written one.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Callable, Iterator


# Permissions asked for when a file is created; the kernel takes the process umask off (0644 under umask
# 022, 0640 under 027), as for any file the user creates. tempfile.mkstemp would ask for 0600: outputs on
# shared storage (checkpoints, score files, reports) could then not be read by colleagues.
_NEW_FILE_MODE = 0o666
_TEMP_NAME_TRIES = 100


def _create_temp_beside(path: Path) -> tuple[int, Path]:
    """A new, empty file ``.<name>.<random>.tmp`` in ``path``'s folder, opened for writing (O_EXCL: never an
    existing one), with the umask's permissions. Returns (descriptor, path)."""
    for _ in range(_TEMP_NAME_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            return os.open(tmp, flags, _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name after {_TEMP_NAME_TRIES} tries")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``, else it is removed.

    The file gets the permissions of any new file of this process (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp_beside(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside folder ``path`` durable (a no-op where the file system cannot)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


class LockHeld(OSError):
    """Another process holds the lock; ``holder`` is the pid it wrote into the lock file (or "unknown")."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is locked by pid {holder}")
        self.path, self.holder = path, holder


_HELD_LOCKS: set[int] = set()  # descriptors of the locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child: close the inherited lock descriptors. An flock belongs to the open file, which a
    fork shares, so a child that outlived its parent (a DataLoader worker after the parent's SIGKILL) would
    otherwise keep the lock; closing the child's copy leaves the parent's lock as it is."""
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an flock on the file ``path`` (created, with this pid in it, removed on exit).

    The kernel drops the lock when its holder dies, even by SIGKILL, so a stale lock file never blocks a
    later run; forked children do not keep it (see _drop_inherited_locks), and the descriptor is not
    inherited across exec. Raises LockHeld when another process holds it, OSError when the file cannot be
    created.
    """
    import fcntl

    path = Path(path)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeld(path, holder) from None
        try:  # a holder that just finished removed the file: lock the one now at that path instead
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _HELD_LOCKS.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        _HELD_LOCKS.discard(fd)
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock_or(path: str | os.PathLike, error: type[Exception], holder: str | Callable[[], str],
                      target: str | os.PathLike, choose: str, rerun: str = "a killed run resumes") -> Iterator[Path]:
    """exclusive_lock, with the two ways of not getting it turned into one ``error`` each, worded the same
    for every tool: another ``holder`` (a command, e.g. "flowprep extract", or a function that finds it out)
    is writing ``target``; or
    ``target`` cannot be written, and the user should ``choose`` another place (e.g. "an --out"). ``rerun``
    says what a re-run after stopping the holder does. Errors raised while the lock is held pass unchanged."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(path))
        except LockHeld as exc:
            who = holder() if callable(holder) else holder
            raise error(f"another {who} (pid {exc.holder}) is writing {target}; wait for it to finish or "
                        f"stop it, then re-run ({rerun})") from None
        except OSError as exc:
            raise error(f"cannot write {target}: {exc.strerror or exc} ({exc.filename or path}); choose "
                        f"{choose} in a folder you can write to") from exc
        yield Path(path)
