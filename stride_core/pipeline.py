"""Moved to stride_core.runs.pipeline; this alias keeps `stride_core.pipeline` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.pipeline moved to stride_core.runs.pipeline", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.runs.pipeline")
if __name__ != "__main__":
    sys.modules[__name__] = _target
