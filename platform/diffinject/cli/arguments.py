"""The argument parser of every command line (`diffinject`, experiments/*.py): a bad command
line is answered as any other bad input, with one line `error: ...` and exit status 2."""
from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser that reports a usage error (an unknown choice, a missing or badly typed
    argument) in one line instead of under the usage block; `--help` still shows the usage.
    Subcommand parsers are of this class too (add_subparsers makes parsers of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
