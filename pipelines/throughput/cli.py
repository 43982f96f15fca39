"""What the benchmark's command lines share: a user error is one line on stderr, exit status 2
(:func:`dali_gop.errors.run_cli`), argparse's mistakes included."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from dali_gop.errors import ConfigError, run_cli


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors raised as :class:`ConfigError` instead of usage + exit."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="show the traceback of an error (also DALI_GOP_DEBUG=1)")

    def error(self, message: str):
        raise ConfigError(f"{message} (--help lists the options)")


def entry(main: Callable[[Sequence[str] | None], int | None], prog: str) -> None:
    sys.exit(run_cli(main, prog=prog))
