"""Moved to stride_core.method.arguments; this alias keeps `stride_core.arguments` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.arguments moved to stride_core.method.arguments", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.method.arguments")
if __name__ != "__main__":
    sys.modules[__name__] = _target
