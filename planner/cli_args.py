"""What both command lines (`python -m planner`, `python -m runtime`) share about arguments.

A bad argument is one line naming it, exit 2, as every other bad input: argparse's default
prints the whole usage block first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from planner.errors import PlannerError
from planner.precision import FROM_DTYPE

EXIT_BAD_INPUT = 2


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


def dtype_alias(text: str) -> str:
    """An argparse type for ``--dtype``: the precision its dtype names (`planner.precision`).

    >>> dtype_alias("bfloat16")
    'bf16-mixed'
    """
    if text not in FROM_DTYPE:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(FROM_DTYPE)}")
    return FROM_DTYPE[text].value


def one_line(exc: BaseException) -> str:
    """An exception's first line (its type when it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def answer(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; whatever it raises becomes one ``error:`` line and an exit code.

    Bad input (a `PlannerError`, or input so large that it exhausts memory or recursion) is
    exit 2; anything else is a bug of ours, still one line (never a traceback), exit 1.
    """
    try:
        return command(args)
    except PlannerError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except (MemoryError, RecursionError) as exc:
        print(f"error: {type(exc).__name__} ({one_line(exc)}): the input is too large", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        print(f"error: unexpected {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 1


def allow_py_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-py",
        action="append",
        default=[],
        metavar="MODULE",
        help="allow importing this module for a py: source named by a file (importing runs its code)",
    )


def grant_consent(args: argparse.Namespace) -> None:
    """Modules named on this command line may be imported (`planner.capture.source`): those given to
    --allow-py, and a ``py:`` model typed with --model. Workers inherit it."""
    from planner.capture.source import allow_py

    for module in getattr(args, "allow_py", None) or []:
        allow_py(module)
    model = getattr(args, "model", None)
    if isinstance(model, str) and model.strip().startswith("py:"):
        allow_py(model.strip())
