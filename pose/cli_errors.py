"""Errors a user can fix (a missing file, a checkpoint of another model, a bad config) as one line on
stderr and exit code 2, for every command of ``pose`` and ``pose-export``; a traceback is kept for bugs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import typer

from pose.errors import (
    CheckpointError,
    ConfigError,
    ImageReadError,
    MissingCheckpointError,
    RuntimeOptionsError,
    VideoReadError,
)

__all__ = ["USER_ERRORS", "WEIGHTS_HINT", "CommandLine", "UserError", "one_line_errors"]

WEIGHTS_HINT = "pass --weights FILE, or download the released checkpoints (README, 'For photos')"


class UserError(Exception):
    """A command's own complaint about its input, shown like the library's known errors."""


USER_ERRORS = (
    UserError,
    CheckpointError,
    ConfigError,
    ImageReadError,
    VideoReadError,
    RuntimeOptionsError,
    FileNotFoundError,
)


def _message(err: Exception) -> str:
    if isinstance(err, MissingCheckpointError):
        return f"{err}; {WEIGHTS_HINT}"
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        return f"{err.filename} does not exist"
    return " ".join(str(err).split())  # one line, whatever the exception wrapped


Command = TypeVar("Command", bound=Callable[..., Any])


def one_line_errors(command: Command) -> Command:
    """``command`` with the known errors printed as ``Error: <one line>``, exit code 2 (a usage error's)."""

    @functools.wraps(command)  # typer reads the parameters through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as err:
            typer.echo(f"Error: {_message(err)}", err=True)
            raise typer.Exit(2) from None

    return cast(Command, run)


class CommandLine(typer.Typer):
    """A Typer app with plain help (no boxes, no ``<bool>`` types) whose commands report known errors in
    one line."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(no_args_is_help=True, add_completion=False, rich_markup_mode=None, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Command], Command]:
        register = super().command(*args, **kwargs)
        return lambda command: register(one_line_errors(command))
