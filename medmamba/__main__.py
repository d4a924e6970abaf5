"""``python -m medmamba`` (what torchrun launches) runs the CLI."""

from medmamba.cli import app

app()
