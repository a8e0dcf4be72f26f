"""Files written once and read at most once, past the page cache (Linux `O_DIRECT`), from I/O threads.

Why: a run writes its outputs (Arrow data files, MDS shards) once and reads none of them back, and writes
the shuffle's parts once and reads each byte of them back once. Through the page cache, every byte written
is first copied into a newly allocated cache page: measured on the 2-core VM this project is built on, 2 GB
cost 0.4 s of CPU into recently freed memory and 4.7 s into memory the hypervisor had taken back, a quarter
of a run's CPU; and tens of GB of outputs push the input out of the cache, so it is read from disk again.
With `O_DIRECT` the disk takes the writer's own reused, aligned buffers (2 GB: 0.2 s of CPU, 1.3 s of disk
time that overlaps the next batch's work in writer threads).

Written by hand because neither Python's `open` nor pyarrow offers `O_DIRECT`: it needs block-aligned
buffers, offsets and lengths, so bytes are staged in page-aligned buffers and the last partial block is
written padded and the file truncated to its true size. Where `O_DIRECT` is unavailable (not Linux, tmpfs
before Linux 6.6, some network filesystems), a plain buffered file is used instead.

When (`io.direct` in the config, one setting per command): `auto`, the default, only on local block-device
filesystems (ext2/3/4, xfs, btrfs, f2fs; read from the mount table), never on network, parallel or FUSE
filesystems or tmpfs, where the flag may be accepted and then make every write synchronous; `on` wherever the
filesystem takes the flag; `off` never. `CELLCORPUS_DIRECT_IO` (`auto`, `on`/`1`, `off`/`0`) overrides it.
"""

from __future__ import annotations

import errno
import functools
import io
import mmap
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from cellcorpus.errors import InputError

__all__ = [
    "open_output",
    "read_ranges",
    "read_whole",
    "open_input",
    "DirectFile",
    "BUFFER_BYTES",
    "DIRECT_MODES",
    "direct_mode",
    "set_direct_mode",
    "direct_io_for",
    "LOCAL_BLOCK_FILESYSTEMS",
]

DIRECT_MODES = ("auto", "on", "off")
# Filesystems on a local block device, where O_DIRECT goes straight to the disk. Anything else (nfs, lustre,
# gpfs, cifs, fuse.*, overlay, tmpfs, ...) gets buffered writes under `auto`.
LOCAL_BLOCK_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
_MODE = "auto"  # this process's mode: set for a command's duration (`direct_mode`) or by a worker's initializer

ALIGN = 4096  # block alignment O_DIRECT needs on every common device (512 or 4096)
BUFFER_BYTES = 4 << 20  # bytes handed to one write call
RING = 4  # buffers per open file: writes queue this deep before the writer waits for the disk
READ_AHEAD = 8  # blocks a reader keeps requested ahead of what it parses (32 MB: two record batches)

_lock = threading.Lock()
_free: list[mmap.mmap] = []  # page-aligned buffers kept for reuse (fresh memory costs its page faults)
WRITERS = 2  # threads issuing writes: two requests in flight keep this VM's virtio disk busy
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, I/O threads): threads do not survive a fork


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(WRITERS, thread_name_prefix="cellcorpus-direct-io"))
        return _pool[1]


def _take_buffer() -> mmap.mmap:
    with _lock:
        return _free.pop() if _free else mmap.mmap(-1, BUFFER_BYTES)


def _give_back(buf: mmap.mmap) -> None:
    with _lock:
        _free.append(buf)


def _through_cache_instead(fd: int, exc: OSError, retried: bool) -> bool:
    """After EINVAL on a descriptor opened with O_DIRECT (the filesystem took the flag but refuses this
    alignment): clear the flag so the call can be retried, once, through the page cache. False: not that case.

    Two I/O threads share a descriptor, so the other may have cleared the flag between this call's failure and
    now: a first EINVAL is retried whatever the flag says, a second one is raised."""
    if exc.errno != errno.EINVAL or retried or not hasattr(os, "O_DIRECT"):
        return False
    import fcntl  # POSIX only, and only reached where O_DIRECT (Linux) was used

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_DIRECT:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
    return True


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    retried = False
    while len(view):
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as exc:
            if _through_cache_instead(fd, exc, retried):
                retried = True
                continue
            raise
        view, offset, retried = view[n:], offset + n, False


def set_direct_mode(mode: str) -> str:
    """Set this process's `io.direct` mode (a worker's initializer does); returns the previous one."""
    global _MODE
    if mode not in DIRECT_MODES:
        raise ValueError(f"io.direct must be one of {', '.join(DIRECT_MODES)}, got {mode!r}")
    previous, _MODE = _MODE, mode
    return previous


@contextmanager
def direct_mode(mode: str) -> Iterator[None]:
    """`mode` for the `with` block (a command's units run in this process), the previous one after it."""
    previous = set_direct_mode(mode)
    try:
        yield
    finally:
        set_direct_mode(previous)


_MOUNTS = "/proc/self/mounts"


@functools.lru_cache(maxsize=256)
def _filesystem_type(folder: str) -> str:
    """The type of the filesystem `folder` is on (the longest mount point above it in /proc/self/mounts)."""
    best, kind = "", "unknown"
    try:
        with open(_MOUNTS, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                if (folder == mount or folder.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except OSError:  # no mount table (not Linux): nothing is known to be a local block device
        return "unknown"
    return kind


def direct_io_for(path: str | Path) -> bool:
    """Whether a file at `path` is opened with O_DIRECT under this process's mode (see the module text)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    env = os.environ.get("CELLCORPUS_DIRECT_IO")
    mode = {"0": "off", "1": "on"}.get(env, env) if env else _MODE
    if mode == "off":
        return False
    if mode == "on":
        return True
    return _filesystem_type(os.path.realpath(os.path.dirname(os.path.abspath(path)))) in LOCAL_BLOCK_FILESYSTEMS


def _open_direct(path: str | Path, flags: int) -> int | None:
    """`os.open(path, flags | O_DIRECT)`; None where O_DIRECT is off or the filesystem refuses it (EINVAL)."""
    if not direct_io_for(path):
        return None
    try:
        return os.open(path, flags | os.O_DIRECT, 0o666)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return None


def _read_range(path: str, lo: int, hi: int) -> pa.Buffer:
    start = lo - lo % ALIGN
    length = -(-(hi - start) // ALIGN) * ALIGN
    # from Arrow's pool, not fresh memory: its allocator keeps what a worker frees (MIMALLOC_PURGE_DELAY=-1)
    buf = pa.allocate_buffer(length + ALIGN)
    shift = -buf.address % ALIGN
    view = memoryview(buf)[shift : shift + length]
    fd = _open_direct(path, os.O_RDONLY)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
    try:
        got, retried = 0, False
        while got < hi - start:
            try:
                n = _pread_into(fd, view[got:], start + got)
            except OSError as exc:
                if _through_cache_instead(fd, exc, retried):
                    retried = True
                    continue
                raise
            retried = False
            if n == 0:
                raise InputError(f"{path}: ends at byte {start + got}, {hi} expected (a damaged intermediate file)")
            got += n
    finally:
        os.close(fd)
    return buf.slice(shift + lo - start, hi - lo)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):  # straight into the buffer
        return os.preadv(fd, [view], offset)
    os.lseek(fd, offset, os.SEEK_SET)  # platforms without preadv (Windows): through a bytes object
    data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def read_ranges(ranges: list[tuple[str, int, int]]) -> list[pa.Buffer]:
    """Bytes [lo, hi) of each (path, lo, hi), read past the page cache, by the I/O threads at once.

    For files written with `open_output` and read back once (the shuffle's parts): through the cache, reading
    them would fill new cache pages, the cost `open_output` avoids when writing them."""
    return list(_executor().map(lambda r: _read_range(*r), ranges))


def read_whole(path: str | Path) -> memoryview:
    """A whole file read once past the page cache (verify's MDS shards): a cold buffered read costs ~2 s of
    system time per GB on this VM, mostly in filling cache pages nobody reads again."""
    size = os.path.getsize(path)
    return memoryview(_read_range(str(path), 0, size)) if size else memoryview(b"")


class _BlockReader(io.RawIOBase):
    """A file read front to back past the page cache, `READ_AHEAD` blocks of `BUFFER_BYTES` ahead on the I/O
    threads while the caller parses what it has (verify hashes and checks every byte of an Arrow data file
    once). One block ahead was not enough: a record batch (~16 MB) is parsed only once all of it is read, so
    its reads waited in turn and the disk idled while it was parsed (an Arrow file took as long as its reads
    plus its checks)."""

    def __init__(self, path: str, size: int) -> None:
        self._path, self._size = path, size
        self._block, self._at, self._asked = memoryview(b""), 0, 0
        self._ahead: deque[Future[pa.Buffer]] = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._ahead) < READ_AHEAD and self._asked < self._size:
            hi = min(self._asked + BUFFER_BYTES, self._size)
            self._ahead.append(_executor().submit(_read_range, self._path, self._asked, hi))
            self._asked = hi

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._at == len(self._block):
            if not self._ahead:
                return 0
            self._block, self._at = memoryview(self._ahead.popleft().result()).cast("B"), 0
            self._fill()
        n = min(len(b), len(self._block) - self._at)
        memoryview(b).cast("B")[:n] = self._block[self._at : self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        for pending in self._ahead:
            pending.cancel()
        self._ahead.clear()
        super().close()


def open_input(path: str | Path) -> BinaryIO:
    """`path` for reading once, front to back, unbuffered: past the page cache (`_BlockReader`) where this
    process's `io.direct` mode and the filesystem allow `O_DIRECT`, a plain unbuffered file otherwise."""
    if direct_io_for(path):
        return _BlockReader(str(path), os.path.getsize(path))  # type: ignore[return-value]
    return open(path, "rb", buffering=0)


def open_output(path: str | Path) -> BinaryIO:
    """A new file at `path` for writing once, front to back: a `DirectFile` where the filesystem takes
    `O_DIRECT`, a buffered file otherwise. Either way: `write`, `flush`, `close`, a context manager."""
    fd = _open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    return open(path, "wb") if fd is None else DirectFile(fd)  # type: ignore[return-value]


class DirectFile:
    """Write-only, sequential: bytes fill a ring of aligned buffers; a full one is written by a writer thread
    while the next fills (with two buffers the writer still waited ~1 s per 300k-cell run on the disk).
    `close` writes the last block padded to the alignment, truncates the file to its size and waits for
    every write (a failed write raises there, or when its buffer comes round again)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._bufs = [_take_buffer() for _ in range(RING)]
        self._pending: list[Future[None] | None] = [None] * RING
        self._cur, self._fill, self._size, self._flushed = 0, 0, 0, 0
        self.closed = False

    def write(self, data: Any) -> int:
        """Copy `data` into the buffers (a full buffer goes to a writer thread); return its length."""
        view = memoryview(data).cast("B")
        at = 0
        while at < len(view):
            k = min(BUFFER_BYTES - self._fill, len(view) - at)
            self._bufs[self._cur][self._fill : self._fill + k] = view[at : at + k]
            self._fill += k
            at += k
            if self._fill == BUFFER_BYTES:
                self._submit(BUFFER_BYTES)
        self._size += len(view)
        return len(view)

    def flush(self) -> None:
        """Nothing to do before `close`: only whole blocks can be written with O_DIRECT."""

    def _submit(self, length: int) -> None:
        i = self._cur
        view = memoryview(self._bufs[i])[:length]
        self._pending[i] = _executor().submit(_write_all, self._fd, view, self._flushed)
        self._flushed += length
        self._cur, self._fill = (i + 1) % RING, 0
        self._wait(self._cur)  # the next buffer is refilled only once its write is done

    def _wait(self, i: int) -> None:
        pending, self._pending[i] = self._pending[i], None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Write what is left, truncate the padding off, wait for every write, close the descriptor."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._fill:
                pad = -self._fill % ALIGN
                self._bufs[self._cur][self._fill : self._fill + pad] = bytes(pad)
                self._submit(self._fill + pad)
            for i in range(RING):
                self._wait(i)
            os.ftruncate(self._fd, self._size)  # drop the last block's padding
        finally:
            for f in self._pending:  # after a failure too: a buffer goes back only when no write uses it
                if f is not None:
                    f.exception()
            os.close(self._fd)
            for buf in self._bufs:
                _give_back(buf)

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
