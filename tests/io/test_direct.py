"""Outputs written past the page cache: exact bytes whatever the sizes, and a plain file wherever O_DIRECT is not
available; a failed write is raised, never left as a file that looks complete."""

from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import wait

import numpy as np
import pytest

from cellcorpus.errors import InputError
from cellcorpus.io import direct
from cellcorpus.io.atomic import atomic_path
from cellcorpus.io.direct import ALIGN, BUFFER_BYTES, READ_AHEAD, RING, DirectFile, open_output


def _refuses_o_direct(folder) -> str | None:
    """Why O_DIRECT cannot be tested in `folder` (None when it can): not Linux, or a filesystem that refuses
    the flag (tmpfs before Linux 6.6, some network filesystems)."""
    if not hasattr(os, "O_DIRECT"):
        return "O_DIRECT is Linux-only"
    probe = os.path.join(folder, ".o_direct_probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError as exc:
        return f"the test folder's filesystem refuses O_DIRECT ({os.strerror(exc.errno or 0)})"
    finally:
        if os.path.exists(probe):
            os.unlink(probe)
    return None


@pytest.fixture
def forced_on(tmp_path):
    """O_DIRECT wherever the filesystem takes it (`io.direct: on`); skipped, with the reason, where it does not."""
    reason = _refuses_o_direct(str(tmp_path))
    if reason:
        pytest.skip(reason)
    with direct.direct_mode("on"):
        yield


needs_o_direct = pytest.mark.usefixtures("forced_on")


def _write_in_pieces(f, data: bytes, seed: int) -> None:
    rng = np.random.default_rng(seed)
    at = 0
    while at < len(data):
        k = int(rng.integers(1, 3 * ALIGN))
        if rng.random() < 0.05:
            k = BUFFER_BYTES + 7  # a piece larger than a whole buffer
        assert f.write(memoryview(data)[at : at + k]) == len(data[at : at + k])
        at += k


@needs_o_direct
@pytest.mark.parametrize(
    "size", [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BUFFER_BYTES, BUFFER_BYTES * RING + 123, BUFFER_BYTES * (RING + 3)]
)
def test_direct_file_holds_exactly_the_bytes_written(tmp_path, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "out.bin"
    with open_output(path) as f:
        assert isinstance(f, DirectFile)  # `on`, and the test folder's filesystem takes the flag
        _write_in_pieces(f, data, size)
    assert path.stat().st_size == size
    assert path.read_bytes() == data


@needs_o_direct
def test_buffers_are_reused_across_files(tmp_path):
    for i in range(3):
        with open_output(tmp_path / f"{i}.bin") as f:
            f.write(b"x" * (BUFFER_BYTES + 1))
    assert len(direct._free) >= RING
    before = len(direct._free)
    with open_output(tmp_path / "again.bin") as f:
        f.write(b"y")
    assert len(direct._free) == before


def test_switched_off_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLCORPUS_DIRECT_IO", "0")
    with open_output(tmp_path / "a.bin") as f:
        assert not isinstance(f, DirectFile)
        f.write(b"abc")
    assert (tmp_path / "a.bin").read_bytes() == b"abc"


@needs_o_direct
def test_filesystem_without_o_direct_gets_a_plain_file(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct.os, "open", refuse_direct)
    with open_output(tmp_path / "a.bin") as f:
        assert not isinstance(f, DirectFile)
        f.write(b"abc" * 5000)
    assert (tmp_path / "a.bin").read_bytes() == b"abc" * 5000


@needs_o_direct
def test_alignment_refused_at_write_falls_back_to_the_cache(tmp_path, monkeypatch):
    """A filesystem that opens with O_DIRECT but wants another alignment: the same bytes, written buffered."""
    import fcntl

    real_pwrite = os.pwrite

    def picky(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", picky)
    data = bytes(range(256)) * 40_000  # ~10 MB: several buffers, then a partial block
    with open_output(tmp_path / "a.bin") as f:
        f.write(data)
    assert (tmp_path / "a.bin").read_bytes() == data


@needs_o_direct
def test_failed_write_raises_and_leaves_no_file(tmp_path, monkeypatch):
    def disk_full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct.os, "pwrite", disk_full)
    free_before = len(direct._free)
    final = tmp_path / "shard.mds.zstd"
    with pytest.raises(OSError, match="No space left on device"), atomic_path(final) as tmp, open_output(tmp) as f:
        f.write(b"z" * (2 * BUFFER_BYTES + 5))
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temporary one
    assert len(direct._free) == max(free_before, RING)  # its buffers came back, no write still using them


def test_read_ranges_gives_exactly_the_bytes_asked(tmp_path):
    data = np.random.default_rng(7).integers(0, 256, 3 * BUFFER_BYTES + 999, dtype=np.uint8).tobytes()
    path = tmp_path / "part.arrow"
    with open_output(path) as f:
        f.write(data)
    ranges = [(0, 0), (0, 1), (1, ALIGN + 3), (ALIGN, 2 * ALIGN), (5, len(data)), (len(data) - 7, len(data))]
    got = direct.read_ranges([(str(path), lo, hi) for lo, hi in ranges])
    assert [g.to_pybytes() for g in got] == [data[lo:hi] for lo, hi in ranges]


@pytest.mark.parametrize("mode", ["on", "off"])
@pytest.mark.parametrize(
    "size", [0, 1, ALIGN + 3, BUFFER_BYTES, 2 * BUFFER_BYTES + 999, (READ_AHEAD + 2) * BUFFER_BYTES + 999]
)
def test_open_input_and_read_whole_give_the_file_exactly(tmp_path, mode, size):
    """verify's readers: front to back in pieces of any size, or whole; past the cache (`on`, skipped where the
    filesystem refuses the flag) or through it (`off`), the same bytes, also past the blocks read ahead."""
    if mode == "on" and (reason := _refuses_o_direct(str(tmp_path))):
        pytest.skip(reason)
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "data.arrow"
    path.write_bytes(data)
    with direct.direct_mode(mode):
        assert bytes(direct.read_whole(path)) == data
        with direct.open_input(path) as f:
            assert isinstance(f, direct._BlockReader) == (mode == "on")
            got, rng = bytearray(), np.random.default_rng(1)
            while chunk := f.read(int(rng.integers(1, 3 * ALIGN))):
                got += chunk
            assert f.read(10) == b""
    assert bytes(got) == data


def test_open_input_closed_half_way_cancels_its_reads_ahead(tmp_path, monkeypatch):
    """A reader closed after its first bytes (a data file that fails to parse) cancels the blocks it asked for
    ahead and not yet started: the I/O threads are free for the next file at once."""
    path = tmp_path / "data.arrow"
    path.write_bytes(b"q" * ((READ_AHEAD + 3) * BUFFER_BYTES))
    gate, read = threading.Event(), direct._read_range

    def held(p, lo, hi):  # every block after the first waits until the reader is closed
        if lo:
            gate.wait(30)
        return read(p, lo, hi)

    monkeypatch.setattr(direct, "_read_range", held)
    monkeypatch.setattr(direct, "direct_io_for", lambda p: True)
    f = direct.open_input(path)
    assert f.read(5) == b"qqqqq"
    pending = list(f._ahead)
    f.close()
    gate.set()
    wait(pending, timeout=60)
    assert not f._ahead and len(pending) == READ_AHEAD
    assert sum(p.cancelled() for p in pending) == READ_AHEAD - direct.WRITERS  # only the running ones finish


def test_a_truncated_file_is_named_not_read_short(tmp_path):
    path = tmp_path / "part.arrow"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(InputError, match=r"part\.arrow: ends at byte 5000, 9000 expected"):
        direct.read_ranges([(str(path), 100, 9000)])


@pytest.mark.parametrize("value, direct_file", [("0", False), ("off", False)])
def test_environment_overrides_the_setting(tmp_path, monkeypatch, value, direct_file):
    monkeypatch.setenv("CELLCORPUS_DIRECT_IO", value)
    with direct.direct_mode("on"), open_output(tmp_path / "a.bin") as f:
        assert isinstance(f, DirectFile) is direct_file


def test_off_never_uses_o_direct(tmp_path, monkeypatch):
    monkeypatch.delenv("CELLCORPUS_DIRECT_IO", raising=False)
    with direct.direct_mode("off"), open_output(tmp_path / "a.bin") as f:
        assert not isinstance(f, DirectFile)


MOUNTS = """\
/dev/vda / ext4 rw 0 0
server:/export /data nfs4 rw 0 0
/dev/sdb /data/scratch xfs rw 0 0
lustre@tcp:/fs /lustre lustre rw 0 0
sshfs#me@host: /data/scratch/remote fuse.sshfs rw 0 0
tmpfs /tmp/ram tmpfs rw 0 0
/dev/sdc /my\\040disk btrfs rw 0 0
"""


@pytest.mark.parametrize(
    "folder, kind, direct_io",
    [
        ("/home/me/out", "ext4", True),
        ("/data/run1", "nfs4", False),  # network: the flag may be taken and make every write synchronous
        ("/data/scratch/run1", "xfs", True),
        ("/data/scratchy", "nfs4", False),  # a longer name is not a mount point below /data/scratch
        ("/lustre/project", "lustre", False),
        ("/data/scratch/remote/x", "fuse.sshfs", False),
        ("/tmp/ram/x", "tmpfs", False),
        ("/my disk/out", "btrfs", True),
    ],
)
def test_auto_uses_o_direct_on_local_block_devices_only(tmp_path, monkeypatch, folder, kind, direct_io):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    monkeypatch.setattr(direct, "_MOUNTS", str(mounts))
    monkeypatch.delenv("CELLCORPUS_DIRECT_IO", raising=False)
    direct._filesystem_type.cache_clear()
    try:
        assert direct._filesystem_type(folder) == kind
        with direct.direct_mode("auto"):
            assert direct.direct_io_for(f"{folder}/shard.mds") is (direct_io and hasattr(os, "O_DIRECT"))
    finally:
        direct._filesystem_type.cache_clear()


def test_io_direct_setting_is_validated(tmp_path):
    from cellcorpus.config import load_config
    from cellcorpus.errors import ConfigError

    with pytest.raises(ConfigError, match=r"io\.direct: "):
        load_config({"io": {"direct": "sometimes"}})
    assert load_config({"io": {"direct": "off"}}).io.direct == "off"
