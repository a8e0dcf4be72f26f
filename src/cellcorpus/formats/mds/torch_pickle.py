"""Torch-tensor pickles for the `pkl` encoding, byte-identical across runs and processes, written without torch.

torch keys a pickled storage by its memory address, so its own pickles differ from run to run. Here the
legacy `torch.save` payload is written with the fixed key "0": the same loader calls
(`_rebuild_tensor_v2(_load_from_bytes(payload), ...)`) and the bytes of `pickle.dumps(torch.from_numpy(a))`
otherwise. torch's functions and storage classes are pickled by name (`_Name`), so writing never imports
torch (~1 s and ~300 MB per worker). The training loader reads the samples with torch; cellcorpus reads
them back (`verify`) with the restricted reader in `safe_pickle`, which needs no torch and executes nothing.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["TorchPickler"]


class _Name:
    """A module-level name pickled by reference (module + qualified name) without importing its module."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle requires a reduce function to be callable
        raise TypeError(f"{self.module}.{self.name} is a stand-in for pickling only")


_PythonPickler: Any = pickle._Pickler  # the pure-Python pickler: its dispatch table is extensible


class _ByNamePickler(_PythonPickler):  # type: ignore[misc]
    """Writes `_Name`s exactly as `save_global` writes the real object (STACK_GLOBAL / GLOBAL, then memoized),
    minus the import check; everything else as the standard pickler, byte for byte."""

    dispatch = _PythonPickler.dispatch.copy()

    def _save_name(self, obj: _Name) -> None:
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_Name] = _save_name


class TorchPickler:
    """Pickles byte-compatible with `pickle.dumps(torch.from_numpy(a))`, except the storage key.

    torch keys a pickled storage by its memory address, so its own pickles differ from run to run.
    Here the legacy `torch.save` payload is written by hand with the fixed key "0": same loader
    calls (`_rebuild_tensor_v2(_load_from_bytes(payload), ...)`), byte-identical across reruns.
    """

    _MAGIC = 0x1950A86A20F9469CFC6C
    _SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}

    def __init__(self) -> None:
        self._storage_types = {
            np.dtype(np.int64): _Name("torch", "LongStorage"),
            np.dtype(np.float32): _Name("torch", "FloatStorage"),
        }
        self._head = b"".join(pickle.dumps(x, protocol=2) for x in (self._MAGIC, 1001, self._SYS_INFO))
        self._keys = pickle.dumps(["0"], protocol=2)
        self._rebuild = _Name("torch._utils", "_rebuild_tensor_v2")
        self._load = _Name("torch.storage", "_load_from_bytes")
        self._templates: dict[tuple[str, int], tuple[bytes, bytes]] = {}

    def _payload(self, arr: NDArray[Any]) -> bytes:
        stype = self._storage_types[arr.dtype]
        buf = io.BytesIO()
        p = _StoragePickler(buf, protocol=2)
        p.storage_id = ("storage", stype, "0", "cpu", len(arr), None)
        p.dump(_STORAGE)
        return self._head + buf.getvalue() + self._keys + np.int64(len(arr)).tobytes() + arr.tobytes()

    def template(self, dtype: np.dtype[Any], n: int) -> tuple[bytes, bytes]:
        """(prefix, suffix) such that `prefix + arr.tobytes() + suffix == dumps(arr)` for every 1-D `arr` of
        `dtype` and length `n`: a tensor pickle is a fixed frame around its raw bytes. Cached per length, so a
        shard's samples are assembled with array operations instead of one pickle call each."""
        key = (np.dtype(dtype).str, n)
        hit = self._templates.get(key)
        if hit is None:
            probe = np.zeros(n, dtype=dtype)
            whole = self.dumps(probe)
            payload = self._payload(probe)
            end = whole.index(payload) + len(payload)
            hit = (whole[: end - probe.nbytes], whole[end:])
            if len(self._templates) >= 65_536:  # bounded: lengths beyond this many distinct ones are rebuilt
                self._templates.clear()
            self._templates[key] = hit
        return hit

    def dumps(self, arr: NDArray[Any]) -> bytes:
        """The pickle of `torch.from_numpy(arr)` (1-D int64 or float32), with a fixed storage key."""
        storage = _Reduce(self._load, (self._payload(arr),))
        tensor = _Reduce(self._rebuild, (storage, 0, (len(arr),), (1,), False, OrderedDict()))
        buf = io.BytesIO()
        _ByNamePickler(buf, protocol=4).dump(tensor)
        return buf.getvalue()


_STORAGE = object()


class _StoragePickler(_ByNamePickler):
    """Pickles the storage placeholder as a persistent id, as `torch.save`'s legacy format does."""

    storage_id: tuple[Any, ...] = ()

    def persistent_id(self, obj: Any) -> Any:
        return self.storage_id if obj is _STORAGE else None


class _Reduce:
    __slots__ = ("fn", "args")

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args
