"""Moved to stride_core.store.corpus; this alias keeps `stride_core.corpus` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.corpus moved to stride_core.store.corpus", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.store.corpus")
if __name__ != "__main__":
    sys.modules[__name__] = _target
