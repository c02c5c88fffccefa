"""Moved to stride_core.method.estimator; this alias keeps `stride_core.estimator` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.estimator moved to stride_core.method.estimator", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.method.estimator")
if __name__ != "__main__":
    sys.modules[__name__] = _target
