"""`cellcorpus verify`: re-read every output and check what training relies on.

Arrow: file checksums vs manifest, schema, CLS + pad first, equal list lengths, token ids inside the
vocabulary, counts vs manifest. MDS: shard bytes vs the hashes and sizes in index.json (compressed
and raw), header/offsets well formed, encodings as configured, decoded samples hold the same
invariants, counts agree with Arrow minus `min_length` drops. Ids: unique in the corpus and
decodable to an input row (folded in as each file is checked: a flag per input row, not every id).
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from numpy.typing import NDArray

from cellcorpus.config import Config, DrugsConfig
from cellcorpus.core.byte_gather import gather_bytes
from cellcorpus.core.ids import decode_ids
from cellcorpus.encodings import CellRules, column_specs, encoding_for
from cellcorpus.errors import ConfigError, InputError, VerifyError
from cellcorpus.exec.runner import ExecutorSpec, Reporter, run_units
from cellcorpus.formats.arrow import CellColumns, cell_schema, hf_features
from cellcorpus.formats.mds import SCALAR_DTYPES, decode_value, decoded_dtype, inspect_shard, iter_samples
from cellcorpus.formats.mds.reader import ReusedArray, column_spans, join_spans
from cellcorpus.formats.mds.safe_pickle import frames
from cellcorpus.io.atomic import write_json_atomic
from cellcorpus.io.direct import open_input, read_whole
from cellcorpus.io.paths import Publisher, exists, filesystem, is_url, local_copy
from cellcorpus.io.vocab import load_vocab
from cellcorpus.layout import DRUG_PAD, REPORT_DIR, VERIFY_RECORD
from cellcorpus.manifest import (
    DrugsManifest,
    MdsManifest,
    TokenizeManifest,
    file_checksum,
    mapping_checksum,
    read_manifest,
)
from cellcorpus.plan import Plan, plan_for
from cellcorpus.stages.base import StageSummary, locked

__all__ = ["Check", "VerifyReport", "run_verify"]


@dataclass
class Check:
    """One kind of check: how many items passed/failed, and the first failure (where + what)."""

    name: str
    checked: int = 0
    failed: int = 0
    first_failure: str | None = None

    def add(self, ok: bool | int, where: str, n: int = 1) -> None:
        """Record `n` items checked; `ok` is a bool, or the number of failures among them."""
        n_bad = (0 if ok else n) if isinstance(ok, bool) else int(ok)
        self.checked += n
        self.failed += n_bad
        if n_bad and self.first_failure is None:
            self.first_failure = where


@dataclass
class VerifyReport:
    """Every check of a verify run, by name, and notes that are not failures."""

    checks: dict[str, Check] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # facts worth a line that are not failures

    def check(self, name: str) -> Check:
        """The check named `name` (created empty on first use)."""
        return self.checks.setdefault(name, Check(name))

    def merge(self, other: dict[str, tuple[int, int, str | None]]) -> None:
        """Add a worker's (checked, failed, first failure) tuples."""
        for name, (checked, failed, first) in other.items():
            c = self.check(name)
            c.checked += checked
            c.failed += failed
            if first and c.first_failure is None:
                c.first_failure = first

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(c.failed == 0 for c in self.checks.values())


def _as_tuples(rep: VerifyReport) -> dict[str, tuple[int, int, str | None]]:
    return {k: (c.checked, c.failed, c.first_failure) for k, c in rep.checks.items()}


@dataclass
class _Checked:
    """What verifying one file found: check tallies, the ids it holds (for the corpus-wide id checks), rows."""

    unit_id: str
    report: dict[str, tuple[int, int, str | None]]
    ids: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    rows: int = 0
    values: dict[str, int] = field(default_factory=dict)  # counts of `_Ctx.count_column`'s values (Arrow files)


@dataclass(frozen=True, order=True)
class _FileUnit:
    unit_id: str
    path: str
    kind: str  # "arrow" | "mds"
    split: str
    expect: tuple[tuple[str, Any], ...]  # checksum / hash records for the file


@dataclass(frozen=True)
class _Ctx:
    rules: CellRules  # the encoding's per-cell checks
    columns: CellColumns  # the encoding's output columns
    metadata_columns: tuple[str, ...]
    mds_columns: tuple[tuple[str, str], ...]
    n_cells: int = 0
    all_hashes: bool = False  # every algorithm index.json lists (default: its fastest; every byte either way)
    count_column: str | None = None  # a column whose values the parent checks (`drug`, against drug_to_id)


@dataclass(frozen=True)
class _Cells:
    """One file's cells as the checks see them: token offsets and ids, and per cell what the rules compare."""

    offsets: NDArray[np.int64]
    tokens: NDArray[Any]
    ids: NDArray[Any]
    values_len: NDArray[Any] | None = None  # per cell: length of its values list (rules.values)
    first_value: NDArray[Any] | None = None  # per cell: its first value (nan: none)
    length: NDArray[Any] | None = None  # per cell: its length column (rules.length)


def _per_cell(rep: VerifyReport, name: str, bad: NDArray[Any], where: str, ids: NDArray[Any], n: int) -> None:
    rep.check(name).add(len(bad), f"{where} cell id {ids[bad[0]]}" if len(bad) else "", n)


def _all_below(tokens: NDArray[Any], bound: int) -> bool:
    """Whether every token is in [0, bound): one pass over them (the max of the tokens read as unsigned, where
    a negative id is larger than any bound), instead of a min and a max."""
    if tokens.dtype.kind == "i":
        tokens = tokens.view(tokens.dtype.str.replace("i", "u"))
    return bool(tokens.max() < bound) if tokens.dtype.kind == "u" else bool(tokens.min() >= 0 and tokens.max() < bound)


def _cell_checks(rep: VerifyReport, where: str, cells: _Cells, rules: CellRules) -> None:
    """The encoding's rules (`CellRules`) on every cell of one file, vectorised."""
    offsets, tokens, ids = cells.offsets, cells.tokens, cells.ids
    lengths = np.diff(offsets)
    n = len(lengths)
    if rules.values is not None and cells.values_len is not None:
        unequal = np.flatnonzero(lengths != cells.values_len)
        _per_cell(rep, f"{rules.tokens}/{rules.values} equal length", unequal, where, ids, n)
    in_range = not len(tokens) or _all_below(tokens, rules.vocab_size)
    bad_tok = np.zeros(0, np.int64) if in_range else np.flatnonzero((tokens < 0) | (tokens >= rules.vocab_size))
    if len(bad_tok):
        cell = int(np.searchsorted(offsets, bad_tok[0], side="right") - 1)
        msg = f"{where} cell id {ids[cell]}: token {tokens[bad_tok[0]]} outside vocabulary of {rules.vocab_size}"
    rep.check("token ids in vocabulary").add(len(bad_tok), msg if len(bad_tok) else "", len(tokens))
    nonempty = lengths > 0
    if rules.first_token is not None:
        first = np.full(n, -1, dtype=np.int64)
        first[nonempty] = tokens[offsets[:-1][nonempty]]
        bad = first != rules.first_token
        if rules.first_value is not None and cells.first_value is not None:
            bad |= cells.first_value != rules.first_value
            _per_cell(rep, "starts with CLS and pad value", np.flatnonzero(bad), where, ids, n)
        else:
            _per_cell(rep, "starts with CLS", np.flatnonzero(bad), where, ids, n)
    if rules.last_token is not None:
        last = np.full(n, -1, dtype=np.int64)
        last[nonempty] = tokens[offsets[1:][nonempty] - 1]
        _per_cell(rep, "ends with EOS", np.flatnonzero(last != rules.last_token), where, ids, n)
    if rules.max_length is not None:
        _per_cell(
            rep, f"at most {rules.max_length:,} tokens", np.flatnonzero(lengths > rules.max_length), where, ids, n
        )
    if rules.length is not None and cells.length is not None:
        _per_cell(rep, f"{rules.length} equals the tokens", np.flatnonzero(cells.length != lengths), where, ids, n)


class _Hashing(io.RawIOBase):
    """A read-only file that hashes what is read through it: a data file is checksummed as it is parsed, one
    batch in memory at a time (a mapped file counts whole in the worker's RSS, ~300 MB per data file)."""

    def __init__(self, f: Any) -> None:
        self._f, self.hash = f, xxhash.xxh64()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b)
        self.hash.update(memoryview(b)[:n])
        return int(n)


def _verify_arrow(unit: _FileUnit, ctx: _Ctx, path: Path) -> _Checked:
    rep = VerifyReport()
    expect = dict(unit.expect)
    where = f"{unit.split}/{Path(unit.path).name}"
    if not path.is_file():
        rep.check("arrow files present").add(False, f"{where}: missing")
        return _Checked(unit.unit_id, _as_tuples(rep))
    rep.check("arrow files present").add(True, "")
    checksums = rep.check("arrow checksums")  # listed in this order, whatever is found first
    ids: list[NDArray[Any]] = []
    values: dict[str, int] = {}
    with open_input(path) as f:  # past the page cache where io.direct allows: read once, never again
        hashed = _Hashing(f)
        src = io.BufferedReader(hashed, 1 << 22)
        try:
            reader = pa.ipc.open_stream(src)
            want = cell_schema(ctx.columns, list(ctx.metadata_columns))
            rep.check("arrow schema and dtypes").add(
                reader.schema.equals(want), f"{where}: schema {reader.schema.types} != {want.types}"
            )
            empty = pa.RecordBatch.from_pylist([], schema=reader.schema)
            n = 0
            counted = ctx.count_column if ctx.count_column in reader.schema.names else None
            for batch in reader:
                _check_batch(rep, where, batch, ctx)
                ids.append(batch.column("id").to_numpy())
                if counted is not None:  # counted here, while the batch is in memory: no second read
                    for item in pc.value_counts(batch.column(counted)).to_pylist():
                        values[item["values"]] = values.get(item["values"], 0) + item["counts"]
                n += 1
            if not n:  # the checks are listed for an empty file too
                _check_batch(rep, where, empty, ctx)
        except (pa.ArrowInvalid, OSError) as exc:
            rep.check("arrow readable").add(False, f"{where}: {exc}")
            ids = []
        while src.read(1 << 22):  # the rest (the end-of-stream marker, or what could not be read) is hashed too
            pass
    checksums.add(hashed.hash.hexdigest() == expect.get("xxh64"), f"{where}: checksum differs from manifest")
    if "arrow readable" in rep.checks:
        return _Checked(unit.unit_id, _as_tuples(rep))
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return _Checked(unit.unit_id, _as_tuples(rep), all_ids, len(all_ids), values)


def _check_batch(rep: VerifyReport, where: str, batch: pa.RecordBatch, ctx: _Ctx) -> None:
    """The cell checks of one record batch, zero-copy over its buffers."""
    rules = ctx.rules
    names = batch.schema.names
    if rules.tokens not in names:  # a schema failure, already named
        return
    tokens = batch.column(rules.tokens)
    offsets = tokens.offsets.to_numpy().astype(np.int64)
    t = tokens.values.to_numpy()[offsets[0] : offsets[-1]] if len(tokens) else np.zeros(0, np.int64)
    offsets -= offsets[0]
    e_len = first_e = length = None
    if rules.values is not None and rules.values in names:
        exprs = batch.column(rules.values)
        e_len = pc.list_value_length(exprs).to_numpy(zero_copy_only=False).astype(np.int64)
        first_e = (
            pc.list_element(exprs, 0).to_numpy(zero_copy_only=False)
            if len(exprs) and e_len.min() > 0
            else np.full(len(exprs), np.nan)
        )
    if rules.length is not None and rules.length in names:
        length = batch.column(rules.length).to_numpy(zero_copy_only=False)
    _cell_checks(rep, where, _Cells(offsets, t, batch.column("id").to_numpy(), e_len, first_e, length), rules)


def _verify_shard(unit: _FileUnit, ctx: _Ctx, path: Path) -> _Checked:
    rep = VerifyReport()
    info = dict(unit.expect)
    where = f"{unit.split}/{(info['zip_data'] or info['raw_data'])['basename']}"
    empty = _Checked(unit.unit_id, {})
    if not path.is_file():
        rep.check("mds shards present").add(False, f"{where}: missing")
        empty.report = _as_tuples(rep)
        return empty
    rep.check("mds shards present").add(True, "")
    shard = inspect_shard(read_whole(path), info, ctx.all_hashes)  # the format's own structural checks
    for name, ok, detail in shard.checks:
        rep.check(name).add(ok, f"{where}: {detail}")
    if shard.raw is None or shard.config is None or shard.offsets is None:
        empty.report = _as_tuples(rep)
        return empty
    raw, config, offsets = shard.raw, shard.config, shard.offsets
    encs = dict(zip(config["column_names"], config["column_encodings"], strict=True))
    rep.check("mds encodings as configured").add(encs == dict(ctx.mds_columns), f"{where}: encodings {encs}")
    rules = ctx.rules
    tok_name, val_name = rules.tokens, rules.values
    want_t = decoded_dtype(encs.get(tok_name, ""), tok_name)
    want_v = decoded_dtype(encs.get(val_name, ""), val_name) if val_name else None
    decodes = rep.check("mds samples decode (no pickle executed)")
    fast = _decode_fast(raw, config, offsets, encs, (tok_name, want_t), (val_name, want_v))
    if fast is not None:  # our writer's own layout: every sample decoded with array operations
        ids_arr, offs, tokens, e_lens, first_e = fast
        decodes.add(0, "", len(ids_arr))
        rep.check("mds sample dtypes").add(0, "", len(ids_arr))
        if len(ids_arr):
            _cell_checks(rep, where, _Cells(offs, tokens, ids_arr, e_lens, first_e), rules)
        return _Checked(unit.unit_id, _as_tuples(rep), ids_arr, len(ids_arr))
    ids, t_all, lens, e_lens, first_e, given = [], [], [], [], [], []
    dtype_bad = 0
    for k, sample in enumerate(iter_samples(raw, config, offsets)):
        try:  # a hostile or damaged sample is a named failure; `pkl` is read by the restricted reader
            sid = int(decode_value(encs["id"], sample["id"])) if "id" in sample else k
            tv = np.asarray(decode_value(encs[tok_name], sample[tok_name])) if tok_name in sample else None
            ev = np.asarray(decode_value(encs[val_name], sample[val_name])) if val_name in sample else None
            n = int(decode_value(encs[rules.length], sample[rules.length])) if rules.length in sample else None
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            decodes.add(False, f"{where} sample {k}: {exc}")
            continue
        decodes.add(True, "")
        ids.append(sid)
        if tv is None:
            continue
        dtype_bad += int(tv.ndim != 1 or (want_t is not None and tv.dtype != want_t))
        t_all.append(tv.reshape(-1).astype(np.int64))
        lens.append(tv.size)
        if ev is not None:
            dtype_bad += int(ev.ndim != 1 or (want_v is not None and ev.dtype != want_v))
            e_lens.append(ev.size)
            first_e.append(ev.reshape(-1)[0] if ev.size else np.nan)
        given.append(-1 if n is None else n)
    shown = "/".join(c for c in (tok_name, val_name) if c)
    rep.check("mds sample dtypes").add(dtype_bad, f"{where}: {shown} dtype differs from encoding", len(lens))
    if lens:
        offs = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=offs[1:])
        values_len = np.array(e_lens) if len(e_lens) == len(lens) else None
        cells = _Cells(offs, np.concatenate(t_all), np.array(ids), values_len,
                       np.array(first_e) if values_len is not None else None,
                       np.array(given) if rules.length in encs else None)  # fmt: skip
        _cell_checks(rep, where, cells, rules)
    return _Checked(unit.unit_id, _as_tuples(rep), np.array(ids, np.int64), len(ids))


_GENES = ReusedArray()  # per process: one shard's genes at a time


def _decode_fast(
    raw: bytes,
    config: dict[str, Any],
    offsets: NDArray[Any],
    encs: dict[str, str],
    tokens: tuple[str, np.dtype[Any] | None],
    values: tuple[str | None, np.dtype[Any] | None],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[Any], NDArray[np.int64], NDArray[Any]] | None:
    """(ids, token offsets, tokens, value lengths, first values) of every sample at once, when the shard holds
    `pkl` token and value lists (the Tahoe-x1 layout) in our writer's frames and a numeric id; None = decode
    sample by sample (another layout, a foreign or damaged frame: that path names the sample)."""
    (tok_name, want_g), (val_name, want_e) = tokens, values
    if val_name is None or encs.get(tok_name) != "pkl" or encs.get(val_name) != "pkl":
        return None
    if want_g is None or want_e is None:
        return None
    id_enc = encs.get("id")
    if id_enc is not None and id_enc not in SCALAR_DTYPES:
        return None
    try:
        spans = column_spans(raw, config, offsets)
    except ValueError:
        return None
    g_ok, g_len, g_at = frames().match_all(raw, *spans[tok_name], want_g)
    e_ok, e_len, e_at = frames().match_all(raw, *spans[val_name], want_e)
    if not (g_ok.all() and e_ok.all()):
        return None
    n = len(offsets) - 1
    if id_enc is not None:
        dtype = np.dtype(SCALAR_DTYPES[id_enc]).newbyteorder("<")
        starts, sizes = spans["id"]
        if np.any(sizes != dtype.itemsize):
            return None
        ids = gather_bytes(raw, starts, dtype.itemsize).view(dtype).ravel().astype(np.int64)
    else:
        ids = np.arange(n, dtype=np.int64)
    genes = join_spans(raw, g_at, g_len, want_g.newbyteorder("<"), _GENES)  # as stored: range checks need no cast
    offs = np.zeros(n + 1, np.int64)
    np.cumsum(g_len, out=offs[1:])
    first_e = np.full(n, np.nan)
    some = np.flatnonzero(e_len > 0)
    first_e[some] = gather_bytes(raw, e_at[some], want_e.itemsize).view(want_e.newbyteorder("<")).ravel()
    return ids, offs, genes, e_len, first_e


def _cells_of(unit: _FileUnit) -> int:
    expect = dict(unit.expect)
    return int(expect.get("n_cells", expect.get("samples", 0)))


def _verify_unit(unit: _FileUnit, ctx: _Ctx) -> _Checked:
    fn = _verify_arrow if unit.kind == "arrow" else _verify_shard
    if is_url(unit.path) and not exists(unit.path):
        return fn(unit, ctx, Path(tempfile.gettempdir()) / "cellcorpus-missing" / Path(unit.path).name)
    with local_copy(unit.path) as local:  # remote outputs: one file at a time in a temp folder
        return fn(unit, ctx, local)


class _IdTracker:
    """Unique and decodable ids, folded in as each file's result arrives. An id is (input file, row), so the
    corpus' ids are a subset of the input rows: one bit per input row (34 MB for 270M rows) says which were
    seen, exactly, and a file's ids are checked against it in a few vectorised passes whatever the number of
    inputs (a shuffled data file holds cells of every input). The ids themselves are dropped once folded."""

    def __init__(self, inputs: dict[int, int], label: str) -> None:
        order = sorted(inputs)
        self.files = np.array(order, dtype=np.int64)  # known input file indexes, sorted
        self.n_obs = np.array([inputs[f] for f in order], dtype=np.int64)
        self.base = np.concatenate([[0], np.cumsum(self.n_obs)]).astype(np.int64)  # first bit of each file
        self.bits = np.zeros((int(self.base[-1]) + 7) // 8, dtype=np.uint8)
        self.uniq, self.valid = Check(f"{label} ids unique"), Check(f"{label} ids decode to an input row")

    def add(self, where: str, arr: NDArray[np.int64]) -> None:
        """Fold in the ids of one file (`where` names it in a failure)."""
        f, r = decode_ids(arr)
        pos = np.minimum(np.searchsorted(self.files, f), max(len(self.files) - 1, 0))
        ok = (self.files[pos] == f) & (r < self.n_obs[pos]) if len(self.files) else np.zeros(len(f), bool)
        bad = np.flatnonzero(~ok)
        self.valid.add(len(bad), f"{where}: id {arr[bad[0]]}" if len(bad) else "", len(arr))
        flat, first, counts = np.unique(self.base[pos[ok]] + r[ok], return_index=True, return_counts=True)
        byte, bit = flat >> 3, (flat & 7).astype(np.uint8)
        again = (((self.bits[byte] >> bit) & 1) == 1) | (counts > 1)  # seen in an earlier file, or twice here
        dup = np.flatnonzero(again)
        self.uniq.add(len(dup), f"{where}: id {arr[ok][first[dup[0]]]} repeats" if len(dup) else "", len(arr))
        np.bitwise_or.at(self.bits, byte, np.left_shift(np.uint8(1), bit))

    def report(self, rep: VerifyReport) -> None:
        """Add this tracker's two checks to `rep` (after the per-file ones, as they are read)."""
        for check in (self.uniq, self.valid):
            rep.checks[check.name] = check


def _read_checked(rep: VerifyReport, name: str, pub: Publisher, rel: str, model: type[Any] | None = None) -> Any:
    """A JSON file a reader depends on (a typed manifest with `model`): missing or damaged is a failed
    check (named), not a crash."""
    try:
        obj = pub.read_json(rel) if model is None else read_manifest(pub, rel, model)
    except InputError as exc:
        rep.check(name).add(False, exc.message)
        return None
    rep.check(name).add(obj is not None, f"{pub.url(rel)}: missing")
    return obj


def _check_dataset_metadata(
    rep: VerifyReport, out: Publisher, d: str, records: list[dict], columns: CellColumns, meta: list[str]
) -> None:
    """What `datasets.load_from_disk` reads: state.json (listing exactly our files) and dataset_info.json."""
    state = _read_checked(rep, "arrow split complete (state.json)", out, f"{d}/state.json")
    if state is not None:
        listed = [f.get("filename") for f in state.get("_data_files", [])]
        rep.check("state.json lists the manifest's files").add(
            listed == [r["path"] for r in records],
            f"{d}/state.json: lists {len(listed)} file(s), manifest {len(records)}",
        )
    info = _read_checked(rep, "arrow dataset_info.json", out, f"{d}/dataset_info.json")
    if info is not None:
        rep.check("dataset_info.json features").add(
            info.get("features") == hf_features(columns, meta),
            f"{d}/dataset_info.json: features differ from the schema",
        )


def _check_foreign_files(rep: VerifyReport, folder: Path, expected: set[str], where: str) -> None:
    """Files in a finished output folder that no record names (a killed run's temporary, a stray copy): a
    loader may pick them up, and nothing else would ever remove them. Local outputs only."""
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in expected)
    rep.check("no foreign files in finished outputs").add(
        len(foreign),
        f"{where}/{foreign[0]}: not written by cellcorpus (or left by a killed run)" if foreign else "",
        max(len(foreign), 1),
    )


def _check_exports(rep: VerifyReport, out: Publisher, manifest: TokenizeManifest) -> None:
    """Every file of the model's own layout (scBank folders, Geneformer's lengths) is whole: its size and every
    byte's xxh64 as recorded when it was written."""
    check = rep.check("model files beside the datasets match their records")
    groups = dict(manifest.exports or {})
    if manifest.fingerprints:  # `cellcorpus dedup` reads them: as whole as the datasets
        groups["fingerprints"] = manifest.fingerprints
    for split, records in groups.items():
        for rec in records:
            where = f"{split}: {rec.path}"
            url = out.url(rec.path)
            fs, path = filesystem(url)
            if not fs.exists(path):
                check.add(False, f"{where} is missing")
                continue
            size, digest = int(fs.size(path)), file_checksum(url)
            check.add(
                size == rec.bytes and digest == rec.xxh64,
                f"{where}: {size} bytes, xxh64 {digest} (recorded {rec.bytes}, {rec.xxh64})",
            )


def _check_mds_folders(rep: VerifyReport, root: Path, split: str, index: dict) -> None:
    """The split folder holds its writer folders and index.json; each writer folder its shards and index."""
    # both names of a compressed shard: a reader (StreamingDataset) decompresses it in place
    stored = [s[k]["basename"].split("/") for s in index["shards"] for k in ("zip_data", "raw_data") if s[k]]
    subs = {sub for sub, _ in stored}
    if (root / split).is_dir():  # a writer whose cells were all dropped (min_length) keeps an index of no shards
        subs |= {d.name for d in (root / split).iterdir() if d.is_dir() and (d / "index.json").is_file()}
    _check_foreign_files(rep, root / split, subs | {"index.json"}, split)
    for sub in sorted(subs):
        names = {name for s, name in stored if s == sub} | {"index.json"}
        _check_foreign_files(rep, root / split / sub, names, f"{split}/{sub}")


def _check_writer_indexes(rep: VerifyReport, out: Publisher, split: str, index: dict) -> None:
    """Each writer's own index.json (read when the export is resumed or re-merged) agrees with the merged one."""
    merged: dict[str, list[tuple[str, int]]] = {}
    for shard in index["shards"]:
        sub, _, name = (shard["zip_data"] or shard["raw_data"])["basename"].partition("/")
        merged.setdefault(sub, []).append((name, shard["samples"]))
    for sub, want in merged.items():
        own = _read_checked(rep, "mds writer indexes", out, f"{split}/{sub}/index.json")
        if own is None:
            continue
        got = [((s["zip_data"] or s["raw_data"])["basename"], s["samples"]) for s in own.get("shards", [])]
        rep.check("mds writer indexes agree with index.json").add(
            got == want, f"{split}/{sub}/index.json: differs from {split}/index.json"
        )


def _check_drugs(rep: VerifyReport, dc: DrugsConfig, manifest_path: str, drug_counts: dict[str, int]) -> None:
    """drug_to_id and drug_fps agree (shape, ids 0..n-1 with <pad> = 0, row 0 zeros, rows as written), and
    the corpus' `drug` values (`drug_counts`, counted by the workers as they read the Arrow files) are keys of
    drug_to_id (the others are counted: the collator maps them to <pad>).
    """
    pub = Publisher(dc.output_root, staging=".")
    manifest = _read_checked(rep, "drugs manifest", pub, Path(manifest_path).name, DrugsManifest)
    drug_to_id = _read_checked(rep, "drug_to_id readable", pub, dc.drug_to_id_file)
    fps_check = rep.check("drug fingerprints readable")
    try:
        fps = np.load(dc.fingerprints_path, allow_pickle=False)
        fps_check.add(True, "")
    except (OSError, ValueError) as exc:
        fps_check.add(False, f"{dc.fingerprints_path}: {exc}")
        return
    if drug_to_id is None or manifest is None:
        return
    if manifest.drug_to_id_xxh64 is not None:
        rep.check("drug_to_id as written").add(
            mapping_checksum(drug_to_id) == manifest.drug_to_id_xxh64,
            f"{dc.drug_to_id_path}: names or ids differ from what the drugs stage wrote",
        )
    else:
        rep.notes.append(f"{dc.drug_to_id_path}: written by an earlier version, its mapping is not checksummed")
    ids = sorted(drug_to_id.values())
    rep.check("drug ids 0..n-1, <pad> = 0").add(
        ids == list(range(len(ids))) and drug_to_id.get(DRUG_PAD) == 0,
        f"{dc.drug_to_id_path}: ids are not 0..{len(ids) - 1}",
    )
    want = (len(drug_to_id), manifest.n_bits)
    rep.check("drug fingerprints shape").add(fps.shape == want, f"{dc.fingerprints_path}: shape {fps.shape} != {want}")
    if fps.shape != want:
        return
    rep.check("drug fingerprint row 0 is padding").add(not fps[0].any(), f"{dc.fingerprints_path}: row 0 is not zeros")
    names = {i: n for n, i in drug_to_id.items()}
    bad = [i for i, h in enumerate(manifest.rows_xxh64) if xxhash.xxh64(fps[i].tobytes()).hexdigest() != h]
    rep.check("drug fingerprint rows as written").add(
        len(bad), f"{dc.fingerprints_path}: row {bad[0]} ({names.get(bad[0])}) differs" if bad else "", len(fps)
    )
    unmapped = {k: v for k, v in drug_counts.items() if k not in drug_to_id}
    if unmapped:
        shown = ", ".join(f"{k or '(empty)'} ({v:,})" for k, v in sorted(unmapped.items())[:8])
        rep.notes.append(f"{sum(unmapped.values()):,} cells have a drug not in drug_to_id (mapped to <pad>): {shown}")


@locked("verify")
def run_verify(
    cfg: Config | Plan,
    spec: ExecutorSpec | None = None,
    reporter: Reporter | None = None,
    *,
    all_hashes: bool = False,
) -> VerifyReport:
    """Check the HF Arrow output (and the MDS output when the config has `mds`); raise VerifyError on failure.

    Every output byte is hashed; MDS shards by the fastest algorithm their index lists, or by every one of them
    with `all_hashes`."""
    plan = plan_for(cfg, "verify", spec)  # (`locked` resolved it: this is that plan)
    cfg, layout, spec = plan.cfg, plan.layout, plan.executor
    hf = cfg.need("huggingface")
    out = layout.merged_root()
    manifest = read_manifest(out, "manifest.json", TokenizeManifest)
    if manifest is None:
        raise ConfigError(
            f"nothing to verify: no manifest in {hf.merged_dataset_root}", hint="run `cellcorpus tokenize`"
        )
    encoding = encoding_for(hf, load_vocab(hf.vocab_file))
    ctx = _Ctx(
        rules=encoding.rules(),
        columns=column_specs(encoding),
        metadata_columns=tuple(manifest.metadata_columns),
        mds_columns=tuple(sorted(cfg.mds.columns.items())) if cfg.mds else (),
        all_hashes=all_hashes,
        count_column="drug" if cfg.drugs is not None else None,
    )
    rep = VerifyReport()
    units: list[_FileUnit] = []
    for split, typed in manifest.splits.items():
        records = [r.model_dump() for r in typed]
        d = f"{split}.dataset"
        _check_dataset_metadata(rep, out, d, records, ctx.columns, list(ctx.metadata_columns))
        if not out.remote:
            names = {r["path"] for r in records} | {"state.json", "dataset_info.json"}
            _check_foreign_files(rep, out.local_dir / d, names, d)
        for rec in records:
            path = out.url(f"{d}/{rec['path']}")
            units.append(_FileUnit(f"arrow-{split}-{rec['path']}", path, "arrow", split, tuple(sorted(rec.items()))))
    _check_exports(rep, out, manifest)
    mds_manifest = None
    if cfg.mds and layout.mds:
        mout = layout.mds
        mds_manifest = _read_checked(rep, "mds manifest (manifest.json)", mout, "manifest.json", MdsManifest)
        for split in cfg.mds.splits:
            index = _read_checked(rep, "mds split complete (index.json)", mout, f"{split}/index.json")
            if index is None:
                continue
            _check_writer_indexes(rep, mout, split, index)
            if not mout.remote:
                _check_mds_folders(rep, mout.local_dir, split, index)
            for k, shard in enumerate(index["shards"]):
                stored = shard["zip_data"] or shard["raw_data"]
                path = mout.url(f"{split}/{stored['basename']}")
                units.append(_FileUnit(f"mds-{split}-{k:06d}", path, "mds", split, tuple(sorted(shard.items()))))
    inputs = {f.file_index: f.n_obs for f in manifest.inputs}
    trackers = {kind: _IdTracker(inputs, kind) for kind in ("arrow", "mds")}

    def fold_ids(unit: _FileUnit, res: _Checked) -> _Checked:
        trackers[unit.kind].add(f"{unit.split}/{Path(unit.path).name}", res.ids)
        res.ids = np.zeros(0, np.int64)  # folded: the parent keeps a flag per input row, not every id
        return res

    results = run_units(
        _verify_unit, units, ctx, None, spec, description="verify", reporter=reporter, cells_of=_cells_of,
        keep=fold_ids,
    )  # fmt: skip
    rows: dict[tuple[str, str], int] = {}
    drug_counts: dict[str, int] = {}
    for u in units:
        res = results[u.unit_id]
        rep.merge(res.report)
        rows[(u.kind, u.split)] = rows.get((u.kind, u.split), 0) + res.rows
        for value, n in res.values.items():
            drug_counts[value] = drug_counts.get(value, 0) + n
    trackers["arrow"].report(rep)
    if cfg.drugs is not None:
        _check_drugs(rep, cfg.drugs, layout.drugs_manifest, drug_counts)
    counts = rep.check("cell counts agree (manifest, Arrow, MDS)")
    for split in manifest.splits:
        n_arrow = rows.get(("arrow", split), 0)
        want = manifest.totals[f"written_{split}"]
        counts.add(n_arrow == want, f"{split}: Arrow has {n_arrow} cells, manifest says {want}")
    if cfg.mds:
        trackers["mds"].report(rep)
        for split in cfg.mds.splits:
            n_mds = rows.get(("mds", split), 0)
            dropped = mds_manifest.splits[split].dropped_min_length if mds_manifest else 0
            n_arrow = rows.get(("arrow", split), 0)
            counts.add(
                n_mds == n_arrow - dropped,
                f"{split}: MDS has {n_mds}, Arrow {n_arrow} - {dropped} dropped by min_length",
            )
            if mds_manifest:
                counts.add(
                    n_mds == mds_manifest.splits[split].samples,
                    f"{split}: MDS has {n_mds}, mds manifest says {mds_manifest.splits[split].samples}",
                )
    _record_outcome(out, rep, manifest.config_hash)
    if not rep.ok:
        failed = [c for c in rep.checks.values() if c.failed]
        err = VerifyError(
            f"verify failed: {failed[0].name}: {failed[0].first_failure}", hint=_repair_hint(failed[0].name, cfg)
        )
        err.report = rep  # type: ignore[attr-defined]
        raise err
    return rep


def _repair_hint(check: str, cfg: Config) -> str:
    """What rebuilds the output a failed check is about (files changed after cellcorpus wrote them)."""
    hf = cfg.need("huggingface")
    if check.startswith("no foreign files"):
        return "remove the named file: cellcorpus did not write it (or a killed run left it; a rerun removes those)"
    if check.startswith("drug"):
        where = cfg.drugs.output_root if cfg.drugs else "drugs.output_root"
        return f"the drug files differ from what was written: delete {where} and run `cellcorpus drugs` again"
    if check.startswith("token ids in vocabulary"):
        return f"the vocabulary changed since tokenize: restore {hf.vocab_file}, or rebuild the corpus"
    if check.startswith("mds") and cfg.mds is not None:
        return f"the MDS export differs from its records: delete {cfg.mds.out_root} and run `cellcorpus mds` again"
    return (
        f"the dataset differs from its records: delete {hf.merged_dataset_root} (and the MDS export made from it) "
        "and run `cellcorpus run` again"
    )


def _record_outcome(out: Publisher, rep: VerifyReport, config_hash: str) -> None:
    """`report/verify.json`: the last verify's checks, for the report's "checks passed" line (a record of
    what was checked, not a completion marker; it names the run it checked)."""
    path = out.local_dir / REPORT_DIR / VERIFY_RECORD
    write_json_atomic(
        path,
        {
            "config_hash": config_hash,
            "ok": rep.ok,
            "checks": {c.name: {"checked": c.checked, "failed": c.failed} for c in rep.checks.values()},
            "notes": rep.notes,
        },
    )
    out.publish(path)


def summary(rep: VerifyReport) -> StageSummary:
    return StageSummary("verify", counts={c.name: c.checked for c in rep.checks.values()}, notes=list(rep.notes))
