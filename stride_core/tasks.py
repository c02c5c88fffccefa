"""Moved to stride_core.method.tasks; this alias keeps `stride_core.tasks` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.tasks moved to stride_core.method.tasks", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.method.tasks")
if __name__ != "__main__":
    sys.modules[__name__] = _target
