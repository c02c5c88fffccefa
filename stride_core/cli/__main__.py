"""`python -m stride_core.cli ...` is `stride ...`."""

import sys

from .commands import main

sys.exit(main())
