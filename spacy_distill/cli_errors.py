"""One error style for every ``spacy-distill`` command.

Expected failures (bad input files, bad arguments, unwritable outputs) print one
``error: ...`` line naming the file:line or the argument and exit with 1;
anything unexpected prints one line with its type, and its traceback only with
``--debug``. Ctrl-C exits with 130 and SIGTERM with 143, both after the
commands' clean-up has run (temporary outputs removed, earlier outputs intact).
"""

import functools
from typing import Any, Callable, NoReturn, TypeVar

import click
import typer

from .io import InputError, UsageError, exit_on_sigterm

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_HELP = "Show the traceback of unexpected errors (by default: one line)."

# Failures whose message is already the whole story: no type name, no hint.
EXPECTED = (InputError, UsageError)


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with code 1.

    message (str): What went wrong, naming the file:line or the argument.
    """
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else ""


def one_line_errors(func: F) -> F:
    """Run a command with SIGTERM handled and its errors turned into one line.

    A command that takes a ``debug`` keyword argument re-raises unexpected
    errors (with their traceback) when it is True.

    func (F): The command's implementation.
    RETURNS (F): The wrapped command.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        exit_on_sigterm()
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except EXPECTED as err:
            fail(_first_line(err))
        except OSError as err:
            # "path: No such file or directory", not "[Errno 2] ...".
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            fail(f"{where}{err.strerror or _first_line(err)}")
        except Exception as err:  # noqa: BLE001 - the point of this wrapper
            if kwargs.get("debug"):
                raise
            detail = _first_line(err)
            fail(f"{type(err).__name__}{': ' + detail if detail else ''} (--debug shows the traceback)")

    return wrapper  # type: ignore[return-value]
