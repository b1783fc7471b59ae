"""``python -m streammgr``: the command line (``streammgr serve``, ``simulate``, ``demo``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        from .cli import main as cli_main
    except ImportError as exc:
        print(
            f"streammgr's command line needs the cli extra ({exc.name} is missing): "
            f"pip install 'streammgr[cli]'",
            file=sys.stderr,
        )
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
