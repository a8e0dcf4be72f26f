"""Import mosaicml-streaming for the compatibility tests only.

`import streaming` imports its vision module, which imports torchvision. PyPI's torchvision does not
load beside the CPU torch wheel this project installs ('operator torchvision::nms does not exist').
The MDS reader never uses torchvision, so when the real import fails we serve every `torchvision.*`
module from a stub finder (placeholder classes for whatever names are imported) and import again.
Only these test helpers install it; the package itself never imports streaming or torchvision.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import pytest


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        stub = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, stub)
        return stub


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        return None


def import_streaming():
    """The real `streaming` package (skip only if it is not installed at all)."""
    if importlib.util.find_spec("streaming") is None:
        pytest.skip("mosaicml-streaming is not installed (pip install '.[test]')")
    if any(isinstance(f, _TorchvisionStub) for f in sys.meta_path):
        return importlib.import_module("streaming")
    try:
        return importlib.import_module("streaming")
    except Exception:  # torchvision failing to load its compiled ops
        for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "streaming")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _TorchvisionStub())
        return importlib.import_module("streaming")


def streaming_dataset(local: str, attempts: int = 5):
    """`StreamingDataset(local=...)` with shuffling off, as a training job would read a split.

    streaming picks a free shared-memory name prefix by scanning /dev/shm, which races when two
    processes on the machine do it at once (FileExistsError); retrying picks the next free prefix.
    """
    streaming = import_streaming()
    for attempt in range(attempts):
        try:
            return streaming.StreamingDataset(local=local, shuffle=False, batch_size=1, allow_unsafe_types=True)
        except FileExistsError:
            if attempt == attempts - 1:
                raise
