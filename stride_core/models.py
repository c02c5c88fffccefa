"""Moved to stride_core.store.models; this alias keeps `stride_core.models` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.models moved to stride_core.store.models", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.store.models")
if __name__ != "__main__":
    sys.modules[__name__] = _target
