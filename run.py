"""Start the server: `python run.py [--avatar A] [--host H] [--port P]`. The one command a user needs.

With no arguments it serves the shipped avatar (static/default_avatar.pt) on http://127.0.0.1:8080.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aiohttp import web

from engine.avatar import DEFAULT_AVATAR, Avatar
from engine.runtime import tune_allocator
from server.app import ServerConfig, create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the neural avatar page")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--avatar", type=Path, default=DEFAULT_AVATAR, help="avatar file (engine.train's output)"
    )
    args = parser.parse_args(argv)
    tune_allocator()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:  # fail here, with the reason, rather than inside the server's start-up
        Avatar.load(args.avatar)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(host=args.host, port=args.port, avatar_path=args.avatar)
    logging.info(
        "serving %s on http://%s:%d (stills; no live stream yet)", args.avatar, args.host, args.port
    )
    web.run_app(create_app(config), host=config.host, port=config.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
