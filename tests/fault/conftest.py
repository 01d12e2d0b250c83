"""Fault tests (tests/fault): load + SIGKILL + restart of the real app process, hostile input at the API routes and
the CLI, training-process faults. The whole folder is sized to run in under 3 minutes on 2 CPU cores; the full
scenario is `benchmarks/fault_load.py` (20 annotators x 60 s)."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `benchmarks.fault_load` and `tests.*` import from the repository root
    sys.path.insert(0, str(REPO))
