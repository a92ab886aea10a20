"""Start the server: `python run.py [--host H] [--port P]`. The one command a user needs."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from engine.runtime import tune_allocator
from server.app import ServerConfig, create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the neural avatar page")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    tune_allocator()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ServerConfig(host=args.host, port=args.port)
    logging.info(
        "serving on http://%s:%d (placeholder page: no avatar yet)", config.host, config.port
    )
    web.run_app(create_app(config), host=config.host, port=config.port, print=None)


if __name__ == "__main__":
    main()
