"""A map's progress bar on stderr (tqdm), with log records printed above it, not through it."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


@contextlib.contextmanager
def progress_bar(total: int, description: str, wanted: bool | None) -> Iterator[tqdm[Any]]:
    """A bar counting to ``total``; ``wanted``: True, False, or None (only when stderr is a
    terminal). Disabled bars still count, so callers update it either way."""
    show = sys.stderr.isatty() if wanted is None else bool(wanted)
    with contextlib.ExitStack() as stack:
        if show and _prints_logs(logging.getLogger()):
            # log records printed meanwhile go above the bar instead of through it (only
            # where logging prints: the redirection would otherwise add a handler, and job
            # output, printed as it is where logging is not configured, would be dropped)
            stack.enter_context(logging_redirect_tqdm())
        bar = tqdm(total=total, desc=description, disable=not show, leave=False)
        stack.callback(bar.close)
        yield bar


def _prints_logs(logger: logging.Logger) -> bool:
    """Whether ``logger`` has a handler writing to the terminal (stdout or stderr)."""
    return any(
        isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
        for h in logger.handlers
    )
