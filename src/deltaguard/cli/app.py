"""The Typer application shared by every command module, and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from deltaguard.errors import DeltaguardError

try:  # typer >= 0.20 runs on its own copy of click, whose exceptions are not click's
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # older typer runs on click itself
    from click.exceptions import ClickException, UsageError

LOG_WIDTH = 160   # columns when the output is a file or a pipe and COLUMNS is unset


def _console(*, stderr: bool = False) -> Console:
    """A rich console. Where the output is not a terminal (``| tee run.log``, CI) and ``COLUMNS`` is unset, rich
    would lay tables out in 80 columns, which cuts the 10-column model-card table of ``guard check`` to "teac…";
    such output gets ``LOG_WIDTH`` columns instead."""
    stream = sys.stderr if stderr else sys.stdout
    to_terminal = hasattr(stream, "isatty") and stream.isatty()
    wide = not to_terminal and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=LOG_WIDTH if wide else None)


console = _console()
err_console = _console(stderr=True)
_state = {"debug": False}
RESUMABLE_VERBS = ("eval", "audit", "demo", "build")  # their run directories keep finished steps (build: guard)


class DeltaguardGroup(TyperGroup):
    """Turns an expected ``DeltaguardError`` into ``error: <message>`` and an exit code.

    Exit 2 for usage and config errors, 1 for runtime errors. Any other exception is a bug: one line
    without ``--debug``, the full traceback with it.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Usage errors (an unknown option, ``--limit abc``, a missing argument) are one line too.

        click would print a usage box; parsing runs before ``invoke``, so it is caught here. A command
        given no arguments prints its help (exit 2), as click does.
        """
        standalone = kwargs.pop("standalone_mode", True)
        if not standalone:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
                typer.echo(exc.ctx.get_help())
                sys.exit(2)
            command = exc.ctx.command_path if exc.ctx is not None else "deltaguard"
            err_console.print(f"[bold red]error:[/] {command}: {exc.format_message()} (see {command} --help)",
                              markup=True, highlight=False, soft_wrap=True)
            sys.exit(2)
        except ClickException as exc:
            err_console.print(f"[bold red]error:[/] {exc.format_message()}", markup=True, highlight=False,
                              soft_wrap=True)
            sys.exit(exc.exit_code)
        except (typer.Abort, EOFError):
            err_console.print("aborted")
            sys.exit(1)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeltaguardError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            if ctx.invoked_subcommand in RESUMABLE_VERBS:
                err_console.print("interrupted; finished steps are kept and a rerun resumes")
            else:
                err_console.print("interrupted; nothing was written (outputs appear only once complete)")
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {exc} (a bug; rerun with --debug for the traceback)",
                highlight=False, soft_wrap=True,
            )
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=DeltaguardGroup,
    help="deltaguard: compress, attack, evaluate, explain and serve fine-tuned language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from deltaguard import __version__

        typer.echo(f"deltaguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug


def add_group(name: str, help_text: str) -> typer.Typer:
    """A sub-command group (``deltaguard models ...``) that shares the error handling."""
    group = typer.Typer(cls=DeltaguardGroup, help=help_text, no_args_is_help=True, pretty_exceptions_enable=False)
    app.add_typer(group, name=name)
    return group


def fail_usage(message: str) -> None:
    """Exit 2 with a one-line message, for checks the CLI itself makes."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def is_interactive() -> bool:
    return sys.stderr.isatty()


JSON_HELP = "print the result as JSON on stdout instead of tables (for scripts)"


def print_json(data: Any) -> None:
    """One JSON document on stdout, nothing else (tables and notes are skipped with ``--json``)."""
    from deltaguard.io import json_text

    typer.echo(json_text(data))


DEVICE_HELP = "where models run: cpu, cuda, cuda:N or auto (CUDA when available)"
DTYPE_HELP = "weights and activations: float32, bfloat16 or float16"


def check_device(device: str, dtype: str | None = None) -> str:
    """Validate ``--device`` (and ``--dtype``) before any work: a missing GPU is a one-line usage error."""
    from deltaguard.models import resolve_device, resolve_dtype

    resolve_device(device)
    if dtype is not None:
        resolve_dtype(dtype)
    return device
