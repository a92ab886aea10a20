"""One command line for the engine's offline work:

    python -m engine capture VIDEO --out DIR        # a face video -> training data
    python -m engine basis --capture DIR            # captured scores -> expression basis
    python -m engine train --data DIR --out A.pt    # a capture -> an avatar
    python -m engine response --avatar A.pt         # how its jaw, smile, blink read back
    python -m engine evaluate --avatar A.pt ...     # an avatar -> quality report
    python -m engine preview --capture DIR --out P  # UV maps over a capture's crops
    python -m engine reference --avatar A.pt --data DIR  # frames to calibrate and gate backends

Each subcommand is its module's own `main`, so `python -m engine train --help` shows its options.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # subcommand -> module whose main(argv) runs it
    "capture": "engine.capture.capture",
    "basis": "engine.training.basis",
    "train": "engine.training.train",
    "response": "engine.training.response",
    "evaluate": "engine.training.evaluate",
    "preview": "engine.training.preview",
    "reference": "engine.training.reference_frames",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"python -m engine: unknown command {name!r}; one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
