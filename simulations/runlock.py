"""One run at a time per run folder.

Two ``therasim run`` on the same folder would both simulate and judge everything left, paying
twice. The first takes an exclusive ``flock`` on ``run.lock`` (released by the kernel when the
process ends, however it ends) and writes its pid there; a second one is refused with that
pid, or waits for the lock with ``--wait``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from therasim.errors import RunLocked

LOCK_NAME = "run.lock"


@contextlib.contextmanager
def run_lock(folder: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the run folder's lock for the duration; raise :class:`RunLocked` if another
    process holds it (unless ``wait``, which blocks until it is free)."""
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(
                f"{folder} is being run by another therasim process (pid {holder}); "
                "let it finish, or pass --wait to start after it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
