"""`memserved`: start the daemon."""
from __future__ import annotations

import logging
import sys

from .config import from_args
from .server import run


def main(argv: list[str] | None = None) -> int:
    config = from_args(argv)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
