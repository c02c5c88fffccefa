"""Moved to stride_core.runs.jobs; this alias keeps `stride_core.jobs` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.jobs moved to stride_core.runs.jobs", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.runs.jobs")
if __name__ != "__main__":
    sys.modules[__name__] = _target

if __name__ == "__main__":  # `python -m stride_core.jobs exec ...` of a job started before the move
    sys.exit(_target.main())
