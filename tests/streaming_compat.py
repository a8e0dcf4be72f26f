"""Import mosaicml-streaming for the compatibility tests only.

`import streaming` imports its vision module, which imports torchvision. PyPI's torchvision may fail
to load beside the CPU torch wheel this project installs ('operator torchvision::nms does not
exist'). The MDS reader never touches torchvision, so when the real import fails we put a stub
module in sys.modules for the duration of the import: only these tests see it.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest


def import_streaming():
    try:
        return importlib.import_module("streaming")
    except ImportError:
        pytest.skip("mosaicml-streaming is not installed (pip install '.[test]')")
    except Exception:  # torchvision failing to load its compiled ops
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "streaming"))]:
            del sys.modules[name]
        stub = types.ModuleType("torchvision")
        stub.datasets = types.ModuleType("torchvision.datasets")
        stub.datasets.VisionDataset = object
        stub.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update(
            {"torchvision": stub, "torchvision.datasets": stub.datasets, "torchvision.transforms": stub.transforms}
        )
        return importlib.import_module("streaming")
