"""MosaicML MDS (format version 2) written natively, vectorised with Arrow compute.

Why not `streaming.MDSWriter`: it pins numpy<2.2 / transformers<5, imports torchvision, and encodes sample by
sample in Python. The layout is the one its reader expects (see `writer`). Modules mirror
mosaicml/streaming's `format/mds/`: `spec` (settings, hashes, compression), `encodings` (the table),
`torch_pickle` (deterministic `pkl` tensors),
`safe_pickle` (reading them back, executing nothing), `writer` (shards + index merge), `reader` (verify).
"""

from cellcorpus.formats.mds.encodings import PKL_TENSOR_DTYPES, SCALAR_DTYPES, Encoding, decoded_dtype, encoding
from cellcorpus.formats.mds.reader import ShardInspection, decode_value, inspect_shard, iter_samples, parse_shard
from cellcorpus.formats.mds.safe_pickle import UnsafePickleError, load_pkl
from cellcorpus.formats.mds.spec import MdsSpec, decompress, hash_bytes
from cellcorpus.formats.mds.torch_pickle import TorchPickler
from cellcorpus.formats.mds.writer import ShardWriter, encode_samples, merge_split_index

__all__ = [
    "MdsSpec",
    "ShardWriter",
    "TorchPickler",
    "Encoding",
    "encoding",
    "encode_samples",
    "merge_split_index",
    "hash_bytes",
    "decompress",
    "parse_shard",
    "inspect_shard",
    "ShardInspection",
    "iter_samples",
    "decode_value",
    "load_pkl",
    "UnsafePickleError",
    "decoded_dtype",
    "SCALAR_DTYPES",
    "PKL_TENSOR_DTYPES",
]
