"""Moved to stride_core.runs.distributed; this alias keeps `stride_core.distributed` working for one release (removed in 0.2)."""

import importlib
import sys
import warnings

warnings.warn("stride_core.distributed moved to stride_core.runs.distributed", DeprecationWarning, stacklevel=2)
_target = importlib.import_module("stride_core.runs.distributed")
if __name__ != "__main__":
    sys.modules[__name__] = _target

if __name__ == "__main__":  # `torchrun ... -m stride_core.distributed ...`: the old entry point
    from .cli.torchrun import main

    sys.exit(main())
