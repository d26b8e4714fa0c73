"""Re-exports that load on first use, so that importing a sub-package costs nothing it does
not need: the 01_preprocess kernel imports avlib.dataio and avlib.stages without loading torch,
which lets its decoding workers fork (avlib.dataio.preprocess.worker_context)."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for `package`'s __init__: each name of `exports` ({name: module
    below the package}) is imported from its module when first asked for."""
    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
