"""What both command lines (`python -m planner`, `python -m runtime`) share about arguments.

A bad argument is one line naming it, exit 2, as every other bad input: argparse's default
prints the whole usage block first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``error: argument --x: ...``."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def positive(limit: int) -> Callable[[str], int]:
    """An argparse type: an integer from 1 to ``limit``.

    >>> positive(8)("4")
    4
    >>> positive(8)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 0 is not from 1 to 8
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"{value:,} is not from 1 to {limit:,}")
        return value

    return parse
