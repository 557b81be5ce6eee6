"""The `jssl` console script: `jssl demo` (more subcommands come with the trainer)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jssl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="tour of the sharding-aware losses on 8 simulated CPU devices")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from jssl import demo

        demo.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
