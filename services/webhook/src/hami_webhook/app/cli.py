"""Command-line entry point of hami-webhook (placeholder until the service is built)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hami-webhook",
        description="hami-webhook: the mutating admission webhook (issue 9). NOT BUILT YET: this entry point only answers --help.",
    )
    parser.parse_args(argv)
    print("hami-webhook is not built yet; see the README status table.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
