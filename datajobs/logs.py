"""Logging for the data jobs: JSON lines when stderr is not a terminal, rich output and progress bars when it is."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class KeyValueFormatter(logging.Formatter):
    """For a terminal: the message followed by its `extra=` fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join([record.getMessage(), *(f"{k}={v}" for k, v in _extras(record).items())])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        return json.dumps(out, default=str)


def is_tty() -> bool:
    return sys.stderr.isatty()


def setup(level: int = logging.INFO) -> None:
    root = logging.getLogger("astrobio")
    root.handlers.clear()
    root.setLevel(level)
    root.propagate = False
    if is_tty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(KeyValueFormatter())
        root.addHandler(handler)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A rich progress bar on a terminal; the items unchanged otherwise."""
    if is_tty():
        from rich.progress import track as rich_track

        yield from rich_track(items, description=description, total=total, console=None, transient=True)
    else:
        yield from items
