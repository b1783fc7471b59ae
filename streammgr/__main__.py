"""``python -m streammgr``: the command line (for now: the demo)."""

from __future__ import annotations

import argparse
import sys

import trio


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="streammgr", description="Run many streams safely.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="many streams against a simulated upstream")
    demo.add_argument("--streams", type=int, default=60, help="how many streams (default 60)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--verbose", action="store_true", help="print lifecycle logs")
    options = parser.parse_args(argv)
    if options.streams < 1:
        parser.error(f"--streams must be at least 1, got {options.streams}")
    from ._demo import run_demo

    return trio.run(run_demo, options.streams, options.seed, options.verbose)


if __name__ == "__main__":
    sys.exit(main())
