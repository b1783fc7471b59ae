"""Logging for the command line: structlog to stderr, as JSON lines or for a console.

The library never configures logging; an application does, and the CLI is one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

from .. import redact_secrets

LogFormat = Literal["json", "console"]


def configure_logging(log_format: LogFormat, level: int = logging.INFO) -> None:
    """Send structlog's events (streammgr's own included) and the standard library's
    warnings (hypercorn's) to stderr, secrets redacted."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (print() writes the line and its newline apart): the
        # processes of `serve --workers` share one stderr, and their JSON lines
        # interleaved mid-line.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
