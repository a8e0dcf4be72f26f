"""Fetch h5ad files (and metadata tables) from a bucket URL into a local cache, in parallel, resumable.

Any fsspec URL works (gs://, s3://, https://, file://, memory://); tests use local stand-ins of the
same code path. A file is fetched to a temporary name, its size checked against the listing, then
renamed: a cached file of the right size is complete, anything else is fetched again.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

from cellcorpus.config import RemoteSourceConfig
from cellcorpus.errors import ConfigError, InputError, MissingExtraError
from cellcorpus.io.atomic import atomic_path
from cellcorpus.manifest import UnitResult

__all__ = [
    "DownloadUnit",
    "open_bucket",
    "plan_download",
    "fetch_unit",
    "check_reachable",
    "check_billing",
    "safe_destination",
    "REQUESTER_PAYS_BUCKETS",
]

log = logging.getLogger(__name__)

_HOSTS = {
    "gs": "storage.googleapis.com",
    "gcs": "storage.googleapis.com",
    "s3": "s3.amazonaws.com",
    "hf": "huggingface.co",
}
# Buckets known (checked 2026-11, ArcInstitute/arc-virtual-cell-atlas README) to bill the requester: without a
# billing project every read is refused, so the download stops before any transfer and names the key.
REQUESTER_PAYS_BUCKETS = frozenset({"arc-institute-virtual-cell-atlas"})
_REQUESTER_PAYS_ERRORS = ("requester pays", "requesterpays", "usermissingproject", "user project", "billing")


def check_reachable(url: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after gcsfs's ~34 s of retries, when the storage host is unreachable.

    The probe uses the URL's own host and port for http(s) mirrors (default 80 / 443).
    """
    parsed = urlparse(url)
    host = _HOSTS.get(parsed.scheme) or (parsed.hostname if parsed.scheme in ("http", "https") else None)
    if not host:
        return
    port = (parsed.port or (80 if parsed.scheme == "http" else 443)) if parsed.scheme in ("http", "https") else 443
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise InputError(
            f"cannot reach {host}:{port} for {url}: {exc}", hint="check the network or use a local mirror URL"
        ) from exc


def check_billing(url: str, project: str | None, key: str) -> None:
    """A known Requester Pays bucket needs a billing project: stop before any transfer, naming the key."""
    parsed = urlparse(url)
    if parsed.scheme in ("gs", "gcs") and parsed.hostname in REQUESTER_PAYS_BUCKETS and not project:
        raise ConfigError(
            f"{key}: gs://{parsed.hostname} is a Requester Pays bucket; set a Google Cloud project to bill",
            hint=f"--set {key}=YOUR_PROJECT (the first 2 TB per month are free, per Arc's README)",
        )


def _billing_refusal(exc: BaseException, url: str, key: str) -> ConfigError | None:
    """The storage's own refusal of an unbilled Requester Pays read, as the same one-line config error."""
    text = str(exc).lower().replace("-", " ").replace("_", " ")
    if any(marker.replace("_", " ") in text for marker in _REQUESTER_PAYS_ERRORS):
        return ConfigError(
            f"{key}: {url} refused the read as Requester Pays (needs a billing project): {str(exc).splitlines()[0]}",
            hint=f"--set {key}=YOUR_PROJECT",
        )
    return None


def open_bucket(url: str, requester_pays_project: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Fsspec filesystem + root path; GCS anonymous unless a requester-pays project is given."""
    scheme = urlparse(url).scheme
    options: dict[str, Any] = {}
    if scheme == "hf":
        try:
            import huggingface_hub  # noqa: F401 - provides fsspec's hf:// filesystem
        except ImportError as exc:
            raise MissingExtraError("hf:// URLs need huggingface_hub", hint="pip install 'cellcorpus[hf]'") from exc
    if scheme in ("gs", "gcs"):
        try:
            import gcsfs  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError("gs:// URLs need gcsfs", hint="pip install 'cellcorpus[gcs]'") from exc
        # token="anon": the default credential lookup probes a cloud metadata server for ~15 s.
        options = {"token": "anon"} if not requester_pays_project else {"project": requester_pays_project,
                                                                          "requester_pays": True}  # fmt: skip
    fs, root = fsspec.core.url_to_fs(url, **options)
    return fs, root.rstrip("/")


@dataclass(frozen=True, order=True)
class DownloadUnit:
    """One file to fetch: remote path, local destination, expected size, how to reopen the store."""

    unit_id: str
    path: str  # remote path (named in errors)
    dest: str
    size: int
    url: str  # the bucket root URL, to reopen the filesystem in the worker
    requester_pays_project: str | None
    retries: int
    base: str = ""  # the cache folder `dest` must stay inside (checked again before writing)


def _size(fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any]) -> int:
    """The listing's size, or (a plain HTTP directory lists none) the server's Content-Length via HEAD."""
    size = info.get("size")
    if size is None:
        size = fs.info(path).get("size")
    if size is None:
        raise InputError(f"{path}: the server gives no size, so a download could not be checked")
    return int(size)


def safe_destination(base: Path, rel: str, entry: str) -> Path:
    """`base / rel` for a remote entry, refused (InputError naming the entry) when it would land outside `base`:
    a `..` or empty component, an absolute name, or a symlink in the cache that points elsewhere. Checked
    before any byte is fetched, and again by the worker just before it writes."""
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise InputError(f"{entry}: remote name {rel!r} would be written outside {base}; refused, nothing fetched")
    dest = base / rel
    root = base.resolve()
    if not dest.resolve().is_relative_to(root):  # resolve() follows symlinks already in the cache
        raise InputError(f"{entry}: {dest} leads outside {base} through a symlink; refused, nothing fetched")
    return dest


def plan_download(src: RemoteSourceConfig, section: str = "source") -> list[DownloadUnit]:
    """List `glob` under the URL (+ metadata URLs); one unit per file, sorted by path."""
    key = f"{section}.requester_pays_project"
    for url in (src.url, *src.metadata_urls):
        check_billing(url, src.requester_pays_project, key)
    check_reachable(src.url)
    fs, root = open_bucket(src.url, src.requester_pays_project)
    try:
        listing = fs.glob(f"{root}/{src.glob}", detail=True)
    except Exception as exc:
        raise _billing_refusal(exc, src.url, key) or InputError(f"cannot list {src.url}: {exc}") from exc
    units = []
    data_base = Path(src.output_root) / src.data_dir
    for path, info in sorted(listing.items()):
        if info.get("type") == "directory":
            continue
        if not path.startswith(f"{root}/"):
            raise InputError(f"{path}: listed under {src.url} but not inside it; refused, nothing fetched")
        rel = path[len(root) :].lstrip("/")
        dest = safe_destination(data_base, rel, path)
        size = _size(fs, path, info)
        units.append(
            DownloadUnit(
                f"data-{rel}", path, str(dest), size, src.url, src.requester_pays_project, src.retries, str(data_base)
            )
        )
    if not units:
        raise InputError(f"no files match {src.glob} under {src.url}")
    for murl in src.metadata_urls:
        mfs, mpath = open_bucket(murl, src.requester_pays_project)
        try:
            size = _size(mfs, mpath, {})
        except InputError:
            raise
        except Exception as exc:
            raise _billing_refusal(exc, murl, key) or InputError(f"cannot stat metadata table {murl}: {exc}") from exc
        meta_base = Path(src.output_root) / "metadata"
        dest = safe_destination(meta_base, mpath.rstrip("/").rsplit("/", 1)[-1], murl)
        units.append(
            DownloadUnit(
                f"meta-{dest.name}",
                mpath,
                str(dest),
                size,
                murl,
                src.requester_pays_project,
                src.retries,
                str(meta_base),
            )
        )
    return units


def fetch_unit(unit: DownloadUnit, _ctx: object = None) -> UnitResult:
    """Fetch one file unless the cache holds it at the listed size; retries with backoff."""
    dest = Path(unit.dest)
    if unit.base:  # a symlink may have appeared in the cache since the plan
        safe_destination(Path(unit.base), dest.relative_to(unit.base).as_posix(), unit.path)
    if dest.is_file() and dest.stat().st_size == unit.size:
        return UnitResult(unit.unit_id, {"bytes": unit.size, "fetched": 0}, [{"path": unit.dest, "bytes": unit.size}])
    fs, _ = open_bucket(unit.url, unit.requester_pays_project)
    last: Exception | None = None
    for attempt in range(unit.retries + 1):
        try:
            with atomic_path(dest) as tmp:
                fs.get_file(unit.path, str(tmp))
                got = tmp.stat().st_size
                if got != unit.size:
                    raise OSError(f"size mismatch: got {got} bytes, listing says {unit.size}")
            return UnitResult(
                unit.unit_id, {"bytes": unit.size, "fetched": 1}, [{"path": unit.dest, "bytes": unit.size}]
            )
        except (OSError, ConnectionError, TimeoutError) as exc:
            refusal = _billing_refusal(exc, unit.url, "requester_pays_project")
            if refusal is not None:
                raise refusal from exc
            last = exc
            if attempt < unit.retries:
                time.sleep(min(2**attempt, 30) * 0.5)
    raise InputError(f"failed to fetch {unit.path} after {unit.retries + 1} attempt(s): {last}")
