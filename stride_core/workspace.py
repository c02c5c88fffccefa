"""Moved to stride_core.store.workspace; this alias keeps `stride_core.workspace` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.workspace moved to stride_core.store.workspace", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.store.workspace")
if __name__ != "__main__":
    sys.modules[__name__] = _target
