"""`memserved`: start the daemon."""
from __future__ import annotations

import sys

from . import logs
from .config import from_args
from .server import run


def main(argv: list[str] | None = None) -> int:
    config = from_args(argv)
    logs.setup(config.log_level, config.log_format)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
