"""The ``medmamba`` command line: a thin typer shell over :mod:`medmamba.api`.

Only this module reads environment variables and chooses exit codes. Heavy imports
(torch, SimpleITK) happen inside the commands so ``medmamba --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from medmamba.errors import MedMambaError

app = typer.Typer(
    name="medmamba",
    help="Self-configuring medical image segmentation with Mamba U-Nets.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

EXIT_USER_ERROR = 2


def run_or_exit(action: Callable[[], T]) -> T:
    """Run ``action``; a MedMambaError becomes one line on stderr and exit code 2."""
    try:
        return action()
    except MedMambaError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    """medmamba: plan, preprocess, train, predict and evaluate."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
