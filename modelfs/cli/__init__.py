"""The `modelfs` command line."""

from modelfs.cli.main import main

__all__ = ["main"]
