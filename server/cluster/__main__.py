"""`python -m server.cluster --cluster ADDRESS [run.py's options]`: a front, as `run.py --cluster`."""

from __future__ import annotations

import run

if __name__ == "__main__":
    raise SystemExit(run.main())
