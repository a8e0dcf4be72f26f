"""Reading `pkl` samples back without executing them: a restricted pickle reader, no torch needed.

`pickle.loads` on a shard's bytes runs whatever callable the pickle names (`__reduce__` payloads), so a
hostile shard would run code inside `verify`. `pickle.Unpickler.find_class` allow-lists are not enough on
their own (`REDUCE`, `BUILD` and friends still call what they are given), so this reader interprets the
opcode stream itself (`pickletools.genops` parses without executing) and *builds nothing but data*: the
three globals a 1-D tensor pickle names (`torch._utils._rebuild_tensor_v2`, `torch.storage._load_from_bytes`,
`collections.OrderedDict`) are markers, the storage types (`torch.LongStorage`, ...) map to numpy dtypes,
and the legacy `torch.save` payload inside is parsed by the same rules. Any other opcode or global is an
`UnsafePickleError`. Plain pickles of scalars (an `id` column declared `pkl`) decode to Python values.

The common case is fast: a sample that equals `TorchPickler`'s own frame for its length (prefix + raw
values + suffix, compared byte for byte) is sliced with `np.frombuffer`, no opcode walk.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cellcorpus.core.byte_gather import gather_bytes
from cellcorpus.formats.mds.torch_pickle import TorchPickler

__all__ = ["UnsafePickleError", "load_pkl", "load_mapping", "frames"]


class UnsafePickleError(ValueError):
    """A pickle that is not a 1-D tensor or a plain scalar: refused, never executed."""


_REBUILD, _LOAD, _ODICT = "rebuild_tensor", "load_from_bytes", "ordered_dict"
_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD,
    ("torch.storage", "_load_from_bytes"): _LOAD,
    ("collections", "OrderedDict"): _ODICT,
}
_STORAGE_DTYPES: dict[tuple[str, str], np.dtype[Any]] = {
    ("torch", name): np.dtype(dt)
    for name, dt in {
        "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
        "ByteStorage": np.uint8, "BoolStorage": np.bool_, "FloatStorage": np.float32,
        "DoubleStorage": np.float64, "HalfStorage": np.float16,
    }.items()
}  # fmt: skip
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Opcodes that only push or arrange data. Everything that calls, builds or extends objects (INST, OBJ, NEWOBJ,
# BUILD, EXT*, PERSID with text ids, ...) is absent and therefore refused; REDUCE, the globals and BINPERSID
# are handled below against the allow-lists.
_DATA_OPS = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT",
    "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING",
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "TUPLE",
    "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE", "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "EMPTY_DICT", "DICT",
    "SETITEM", "SETITEMS", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET", "GLOBAL",
    "STACK_GLOBAL", "REDUCE", "BINPERSID", "BUILD",
})  # fmt: skip
# A plain mapping (Geneformer's token and median dictionaries) may hold numpy scalars: `scalar(dtype, bytes)`
# is rebuilt from its bytes, the dtype from its name; BUILD is accepted on a dtype only (its byte order).
_SCALAR, _DTYPE, _LATIN1 = "numpy_scalar", "numpy_dtype", "latin1_bytes"
_MAPPING_GLOBALS = {
    ("_codecs", "encode"): _LATIN1,  # protocol 2 spells bytes as encode(text, "latin1")
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "dtype"): _DTYPE,
}


class _DType:
    __slots__ = ("name", "order")

    def __init__(self, name: str) -> None:
        self.name, self.order = name, "="


class _Global:
    """A name a pickle referred to: a marker, never the object."""

    __slots__ = ("kind",)

    def __init__(self, kind: Any) -> None:
        self.kind = kind


class _StorageRef:
    __slots__ = ("dtype", "key", "numel")

    def __init__(self, dtype: np.dtype[Any], key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = dtype, key, numel


class _Mark:
    pass


_MARK = _Mark()


def _interpret(stream: io.BytesIO, globals_: dict[tuple[str, str], Any], payload: bytes | None = None) -> Any:
    """Run one pickle (up to STOP) on a data-only stack machine; `globals_` maps allowed names to markers.

    `payload` is the enclosing byte string, consulted by the legacy storage loader (unused elsewhere).
    """
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1 :]
                del stack[i:]
                return items
        raise UnsafePickleError("MARK missing")

    ops: Iterator[tuple[Any, Any, Any]] = pickletools.genops(stream)
    for op, arg, _pos in ops:
        name = op.name
        if name not in _DATA_OPS:
            raise UnsafePickleError(f"opcode {name} is not allowed")
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise UnsafePickleError("pickle does not end with one value")
            return stack[0]
        if name == "MARK":
            stack.append(_MARK)
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, qual = str(arg).partition(" ")
            else:
                qual, module = stack.pop(), stack.pop()
            kind = globals_.get((module, qual))
            if kind is None:
                raise UnsafePickleError(f"global {module}.{qual} is not allowed")
            stack.append(_Global(kind))
        elif name == "REDUCE":
            args, fn = stack.pop(), stack.pop()
            stack.append(_reduce(fn, args))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            if not (isinstance(target, _DType) and isinstance(state, tuple) and len(state) > 1):
                raise UnsafePickleError("BUILD of something that is not a numpy dtype")
            target.order = str(state[1])
        elif name == "BINPERSID":
            stack.append(_persistent(stack.pop()))
        elif name in ("TUPLE", "LIST"):
            items = pop_mark()
            stack.append(tuple(items) if name == "TUPLE" else items)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            k = int(name[-1])
            items = stack[-k:]
            del stack[-k:]
            stack.append(tuple(items))
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "DICT":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2], strict=True)))
        elif name == "APPEND":
            value = stack.pop()
            _as(stack[-1], list).append(value)
        elif name == "APPENDS":
            items = pop_mark()
            _as(stack[-1], list).extend(items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            _as(stack[-1], dict)[_hashable(key)] = value
        elif name == "SETITEMS":
            items = pop_mark()
            target = _as(stack[-1], dict)
            for k, v in zip(items[::2], items[1::2], strict=True):
                target[_hashable(k)] = v
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in memo:
                raise UnsafePickleError(f"memo key {arg} unset")
            stack.append(memo[int(arg)])
        else:  # a literal: ints, floats, strings, bytes
            stack.append(arg)
    raise UnsafePickleError("pickle has no STOP")


def _as(obj: Any, kind: type) -> Any:
    if not isinstance(obj, kind):
        raise UnsafePickleError(f"expected a {kind.__name__} on the stack, found {type(obj).__name__}")
    return obj


def _hashable(key: Any) -> Any:
    if not isinstance(key, str | int | float | bool | bytes | type(None)):
        raise UnsafePickleError(f"dict key of type {type(key).__name__}")
    return key


def _persistent(pid: Any) -> _StorageRef:
    """`("storage", <storage type>, key, location, numel, view_metadata)`: the legacy format's storage record."""
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
        raise UnsafePickleError("persistent id is not a storage record")
    _, stype, key, location, numel, view = pid
    if not (isinstance(stype, _Global) and isinstance(stype.kind, np.dtype)):
        raise UnsafePickleError("storage record without a storage type")
    if not isinstance(key, str) or location != "cpu" or view is not None or not _is_int(numel) or numel < 0:
        raise UnsafePickleError("malformed storage record")
    return _StorageRef(stype.kind, key, numel)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _reduce(fn: Any, args: Any) -> Any:
    if not isinstance(fn, _Global) or not isinstance(args, tuple):
        raise UnsafePickleError("REDUCE of something that is not an allowed global")
    if fn.kind == _ODICT:
        if args not in ((), ([],)):
            raise UnsafePickleError("OrderedDict with content (tensor hooks) is not allowed")
        return {}
    if fn.kind == _LOAD:
        if len(args) != 1 or not isinstance(args[0], bytes):
            raise UnsafePickleError("_load_from_bytes needs one bytes argument")
        return _load_legacy(args[0])
    if fn.kind == _REBUILD:
        return _rebuild(args)
    if fn.kind == _LATIN1:
        if len(args) != 2 or not isinstance(args[0], str) or args[1] != "latin1":
            raise UnsafePickleError("_codecs.encode other than latin1 bytes")
        return args[0].encode("latin1")
    if fn.kind == _DTYPE:
        if not (args and isinstance(args[0], str) and np.dtype(args[0]).kind in "biuf"):
            raise UnsafePickleError(f"numpy dtype {args[:1]!r}: only numbers are read")
        return _DType(args[0])
    if fn.kind == _SCALAR:
        if len(args) != 2 or not isinstance(args[0], _DType) or not isinstance(args[1], bytes):
            raise UnsafePickleError("numpy scalar without a dtype and its bytes")
        dtype = np.dtype(args[0].name).newbyteorder(
            ">" if args[0].order == ">" else "<" if args[0].order == "<" else "="
        )
        if len(args[1]) != dtype.itemsize:
            raise UnsafePickleError("numpy scalar of the wrong size")
        return np.frombuffer(args[1], dtype=dtype)[0]  # kept a numpy scalar: its dtype decides arithmetic
    raise UnsafePickleError("REDUCE of a storage type")


def _rebuild(args: tuple[Any, ...]) -> NDArray[Any]:
    """`_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])` for a 1-D tensor."""
    if len(args) not in (6, 7):
        raise UnsafePickleError(f"_rebuild_tensor_v2 with {len(args)} arguments")
    storage, offset, size, stride, requires_grad, hooks = args[:6]
    if not isinstance(storage, np.ndarray):
        raise UnsafePickleError("tensor without a storage")
    if not (isinstance(size, tuple) and len(size) == 1 and _is_int(size[0]) and size[0] >= 0):
        raise UnsafePickleError(f"tensor of shape {size!r}: only 1-D tensors are read")
    n = size[0]
    if not (isinstance(stride, tuple) and len(stride) == 1 and (stride[0] == 1 or n <= 1)):
        raise UnsafePickleError(f"tensor stride {stride!r}: only contiguous tensors are read")
    if not (_is_int(offset) and offset >= 0 and offset + n <= len(storage)):
        raise UnsafePickleError("tensor reaches past its storage")
    if requires_grad is not False or hooks != {} or (len(args) == 7 and args[6] not in (None, {})):
        raise UnsafePickleError("tensor with gradients, hooks or metadata")
    return storage[offset : offset + n]


def _load_legacy(payload: bytes) -> NDArray[Any]:
    """The legacy `torch.save` bytes of one storage: magic, protocol, sys info, the storage record, its keys,
    then per key an int64 element count and the raw little-endian values."""
    stream = io.BytesIO(payload)
    if _interpret(stream, {}) != _LEGACY_MAGIC or _interpret(stream, {}) != _LEGACY_PROTOCOL:
        raise UnsafePickleError("storage bytes are not a torch.save legacy payload")
    info = _interpret(stream, {})
    if not (isinstance(info, dict) and info.get("little_endian") is True):
        raise UnsafePickleError("storage sys info missing or big-endian")
    ref = _interpret(stream, _STORAGE_DTYPES)
    keys = _interpret(stream, {})
    if not isinstance(ref, _StorageRef) or keys != [ref.key]:
        raise UnsafePickleError("storage bytes hold other than one storage")
    head = stream.read(8)
    if len(head) != 8 or struct.unpack("<q", head)[0] != ref.numel:
        raise UnsafePickleError("storage element count differs from its record")
    nbytes = ref.numel * ref.dtype.itemsize
    start = stream.tell()
    if len(payload) - start != nbytes:
        raise UnsafePickleError(f"storage holds {len(payload) - start} bytes, its record says {nbytes}")
    return np.frombuffer(payload, ref.dtype.newbyteorder("<"), ref.numel, offset=start)


class _Frames:
    """Our own writer's frames (prefix, suffix) per dtype and length, to recognise its samples byte for byte."""

    def __init__(self) -> None:
        self.pickler = TorchPickler()
        self.overheads: dict[np.dtype[Any], list[int]] = {}
        for dtype in (np.dtype(np.int64), np.dtype(np.float32)):
            seen: dict[int, None] = {}
            for n in (0, 1, 255, 256, 8191, 8192, 65535, 65536, 1 << 20):
                p, s = self.pickler.template(dtype, n)
                seen[len(p) + len(s)] = None
            self.overheads[dtype] = list(seen)

    def match(self, data: bytes) -> NDArray[Any] | None:
        for dtype, overheads in self.overheads.items():
            for over in overheads:
                n, rest = divmod(len(data) - over, dtype.itemsize)
                if n < 0 or rest:
                    continue
                prefix, suffix = self.pickler.template(dtype, n)
                if len(prefix) + len(suffix) == over and data.startswith(prefix) and data.endswith(suffix):
                    return np.frombuffer(data, dtype, n, offset=len(prefix))
        return None

    def match_all(
        self, raw: bytes, starts: NDArray[Any], sizes: NDArray[Any], dtype: np.dtype[Any]
    ) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]:
        """`match` for many samples at once (spans of `raw`), as `dtype` tensors: (matched, lengths, payload
        starts). Each sample's prefix and suffix are compared with its length's frame, byte for byte, in one
        array comparison per frame shape; a sample that matches no frame is left for `load_pkl`."""
        n = len(starts)
        ok = np.zeros(n, bool)
        lengths = np.zeros(n, np.int64)
        payload = np.zeros(n, np.int64)
        for over in self.overheads[np.dtype(dtype)]:
            count, rest = np.divmod(sizes - over, dtype.itemsize)
            cand = np.flatnonzero(~ok & (count >= 0) & (rest == 0))
            if not len(cand):
                continue
            uniq, inverse = np.unique(count[cand], return_inverse=True)
            frames = [self.pickler.template(dtype, int(u)) for u in uniq.tolist()]
            shapes = np.array([(len(p), len(s)) for p, s in frames])
            for p_len, s_len in {tuple(x) for x in shapes.tolist()}:
                if p_len + s_len != over:
                    continue
                rows = np.flatnonzero((shapes[:, 0] == p_len) & (shapes[:, 1] == s_len))
                in_shape = np.isin(inverse, rows)
                members = cand[in_shape]
                slot = np.searchsorted(rows, inverse[in_shape])
                want_p = np.frombuffer(b"".join(frames[r][0] for r in rows.tolist()), np.uint8).reshape(-1, p_len)
                want_s = np.frombuffer(b"".join(frames[r][1] for r in rows.tolist()), np.uint8).reshape(-1, s_len)
                got_p = gather_bytes(raw, starts[members], p_len)
                got_s = gather_bytes(raw, starts[members] + sizes[members] - s_len, s_len)
                good = members[(got_p == want_p[slot]).all(axis=1) & (got_s == want_s[slot]).all(axis=1)]
                ok[good] = True
                lengths[good] = count[good]
                payload[good] = starts[good] + p_len
        return ok, lengths, payload


_FRAMES: _Frames | None = None


def frames() -> _Frames:
    """Our writer's frames (built once per process)."""
    global _FRAMES
    if _FRAMES is None:
        _FRAMES = _Frames()
    return _FRAMES


def load_pkl(data: bytes) -> Any:
    """Decode one `pkl` sample without executing it: a 1-D tensor pickle -> numpy array, a plain scalar
    pickle -> its value. Raises UnsafePickleError for anything else (the caller names shard and sample)."""
    hit = frames().match(data)
    if hit is not None:
        return hit
    try:
        stream = io.BytesIO(data)
        value = _interpret(stream, _TENSOR_GLOBALS)
    except UnsafePickleError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, struct.error) as exc:  # malformed opcode stream
        raise UnsafePickleError(f"malformed pickle: {exc}") from exc
    if stream.read(1):
        raise UnsafePickleError("bytes after the pickle's STOP")
    if not _is_plain(value):
        raise UnsafePickleError("pickle is not a tensor or a scalar")
    return value


class _NoGlobals(pickle.Unpickler):
    """An unpickler that resolves no global: with no callable reachable, REDUCE/BUILD/NEWOBJ have nothing to call
    (Python's documented way to restrict unpickling, with the allow-list empty)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def load_mapping(data: bytes, what: str) -> dict[Any, Any]:
    """A pickled dict of plain keys and numbers (numpy scalars stay numpy scalars), read without executing
    anything; anything else is an UnsafePickleError naming `what`."""
    try:  # fast path, in C: a pickle that names no global at all can only build data (str, int, float, dict...)
        plain = _NoGlobals(io.BytesIO(data)).load()
    except Exception:  # names a global (numpy scalars do) or is malformed: the opcode interpreter decides
        plain = None
    if isinstance(plain, dict):
        return plain
    try:
        stream = io.BytesIO(data)
        value = _interpret(stream, _MAPPING_GLOBALS)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{what}: {exc}") from None
    except (ValueError, IndexError, KeyError, TypeError, struct.error) as exc:
        raise UnsafePickleError(f"{what}: malformed pickle: {exc}") from exc
    if not isinstance(value, dict):
        raise UnsafePickleError(f"{what}: not a pickled dict")
    return value


def _is_plain(value: Any) -> bool:
    """A tensor, a scalar, or a tuple of them: what a `pkl` sample may decode to."""
    if isinstance(value, tuple):
        return all(_is_plain(v) for v in value)
    return isinstance(value, np.ndarray | str | int | float | bool | bytes | type(None))
