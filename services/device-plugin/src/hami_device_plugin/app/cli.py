"""Command-line entry point of hami-device-plugin (placeholder until the service is built)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hami-device-plugin",
        description="hami-device-plugin: the device plugin (issue 8). NOT BUILT YET: this entry point only answers --help.",
    )
    parser.parse_args(argv)
    print("hami-device-plugin is not built yet; see the README status table.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
