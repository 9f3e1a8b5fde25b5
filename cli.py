"""Command line entry point: `python -m cli <command>` runs each stage by hand."""

import sys


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("not yet wired")


if __name__ == "__main__":
    sys.exit(main())
