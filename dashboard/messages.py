"""How the pages say what went wrong: one line naming the problem, never a traceback.

User text (a model source, a file name, an error that quotes them) goes through `md`
before Streamlit renders it as Markdown, where ``:llama:`` would become an emoji, ``$x$``
LaTeX and ``*a*`` emphasis. An unexpected exception is written as its type and first line,
with server paths cut down to their file names, both in the page and in the server's log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from planner.errors import PlannerError

log = logging.getLogger("stagecraft.dashboard")

_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|:$~])")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"():,]+){2,}")


def md(text: object) -> str:
    r"""``text`` escaped so that Streamlit's Markdown shows it as written.

    >>> md("unknown model source ':llama:' (see $PATH)")
    "unknown model source '\\:llama\\:' (see \\$PATH)"
    >>> md("- not a list")
    '\\- not a list'
    """
    text = _MARKDOWN.sub(r"\\\1", str(text))
    return "\\" + text if text.startswith(("-", "+", ">", "=")) else text  # not a list, quote or heading


def one_line(exc: BaseException, what: str = "") -> str:
    """The message a page shows for ``exc``: a planner error's own line, else its type and first line.

    >>> one_line(ValueError("bad value\\nmore"))
    'bad value'
    >>> one_line(KeyError("x"), "Pricing the plan")
    "Pricing the plan failed: KeyError: 'x'"
    >>> one_line(OSError("cannot open /srv/app/runs/a.json"))
    'OSError: cannot open a.json'
    """
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    first = _PATH.sub(lambda m: re.split(r"[\\/]", m.group(0))[-1], first)
    if isinstance(exc, PlannerError) or type(exc) is ValueError:
        return first or type(exc).__name__
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"{what} failed: {text}" if what else text


def error(message: str) -> None:
    """Show ``message`` (plain text) as one error line."""
    st.error(md(message))


def unexpected(exc: Exception, what: str) -> None:
    """Show (and log) ``exc`` as one line: a planner error as it is, anything else with its type."""
    message = one_line(exc, what)
    if not isinstance(exc, PlannerError):
        log.error("%s", message)
    error(message)


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Run planner calls; any failure is one line in the page (and the log), then the page stops.

    Streamlit's own stop and rerun signals are BaseExceptions and pass through untouched.
    """
    try:
        yield
    except Exception as exc:
        unexpected(exc, what)
        st.stop()
