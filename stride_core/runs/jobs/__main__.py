"""`python -m stride_core.runs.jobs exec ...`: the process a job is (stride_core.runs.jobs.execute)."""

import sys

from .execute import main

sys.exit(main())
