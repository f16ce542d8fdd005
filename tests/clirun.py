"""Invoking the CLI in-process from tests: the exit code and output, and the one-line error every bad input gets."""

from __future__ import annotations

from typer.testing import CliRunner

from deltaguard.cli import app

runner = CliRunner()


def run(*args: object) -> tuple[int, str]:
    """``deltaguard *args`` in-process: (exit code, combined output)."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    """The single ``error: ...`` line of a refused command (asserts there is nothing else, and no traceback)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    return lines[0]
