"""One writer per output root: a lock file, held with `flock` for the life of the command.

A second run on the same output would redo the work beside the first and can damage what both write, so
each command locks the local roots it writes before its first write and fails at once (exit 2) when another
process holds one, naming that process (host, pid, start time, command). The kernel drops an `flock` when its
holder dies, so a lock file left by a killed run is taken over, with a note naming the run that left it. Locks
are re-entrant within a process (`run` holds them while its stages take them again). Object-store roots
cannot be locked this way; their local staging folders are.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cellcorpus.errors import ConfigError

__all__ = ["LOCK_NAME", "LockedError", "hold_locks"]

log = logging.getLogger(__name__)

LOCK_NAME = ".cellcorpus.lock"
_HELD: dict[str, tuple[int, list[int], list[Path]]] = {}  # root -> (fd, [depth], folders the lock created)


class LockedError(ConfigError):
    """Another cellcorpus process holds the lock of an output root this command writes."""


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        return dict(json.loads(data)) if data.strip() else {}
    except (OSError, ValueError, TypeError):
        return {}


def _describe(h: dict[str, Any]) -> str:
    return (
        f"`{h.get('command', '?')}` on host {h.get('host', '?')}, pid {h.get('pid', '?')}, "
        f"started {h.get('started', '?')}"
    )


def _acquire(root: Path, key_name: str, command: str) -> None:
    key = str(root)
    if key in _HELD:
        _HELD[key][1][0] += 1
        return
    lock = root / LOCK_NAME
    created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if left empty
    for _ in range(10):
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"{key_name}: cannot write to {root} ({reason})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockedError(
                f"{key_name}: {root} is in use by another cellcorpus run ({_describe(holder)}); "
                "this run changed nothing",
                hint="wait for it to finish, or stop it; a lock left by a killed run is taken over automatically",
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and our lock: open it anew
            os.close(fd)
            continue
        previous = _holder(fd)
        if previous:
            log.warning("%s: took over the lock left by a run that ended without releasing it (%s)",
                        root, _describe(previous))  # fmt: skip
        info = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = (fd, [1], created)
        return
    raise LockedError(f"{root}: could not take the lock (it kept changing hands)")


def _release(key: str) -> None:
    fd, depth, created = _HELD[key]
    depth[0] -= 1
    if depth[0] == 0:
        del _HELD[key]
        try:
            os.unlink(Path(key) / LOCK_NAME)  # while still holding it: a waiter re-checks the inode
        except FileNotFoundError:  # the folder was removed meanwhile (by hand): nothing left to release
            pass
        finally:
            os.close(fd)
        for folder in created:  # a command that wrote nothing leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break


@contextmanager
def hold_locks(roots: Iterable[tuple[str, str | Path]], command: str) -> Iterator[None]:
    """Hold the lock of every local root in `roots` ((config key, folder); URLs skipped) for the `with` block."""
    keys = {str(Path(r).resolve()): name for name, r in sorted(roots, key=lambda x: str(x[1])) if "://" not in str(r)}
    taken: list[str] = []
    try:
        for key in sorted(keys):
            _acquire(Path(key), keys[key], command)
            taken.append(key)
        yield
    finally:
        for key in reversed(taken):
            _release(key)
