"""`python -m engine.capture` is `python -m engine capture`."""

import sys

from engine.capture.capture import main

sys.exit(main())
