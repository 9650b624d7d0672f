"""Errors that end a command with one clear line and a documented exit code (see docs/contracts.md)."""

from __future__ import annotations


class AstrobioError(Exception):
    """An error shown to the user as one line; `exit_code` is the process exit status."""

    exit_code = 1


class DataError(AstrobioError):
    """Missing, incomplete or corrupted data, or bad input: exit 2."""

    exit_code = 2


class ConfigError(AstrobioError):
    """A bad config file, key, type or value: exit 2."""

    exit_code = 2


class UpstreamError(AstrobioError):
    """An archive failed after retries: exit 1."""

    exit_code = 1


class MissingExtraError(AstrobioError):
    """An optional dependency is not installed: exit 2, naming the extra that brings it."""

    exit_code = 2

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed; install it with `pip install 'astrobio-train[{extra}]'`")


def require(module: str, extra: str):
    """Import an optional module or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module, extra) from None
