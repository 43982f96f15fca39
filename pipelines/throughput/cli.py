"""What the benchmark's command lines share: a user error is one line on stderr, exit status 2
(:func:`dali_gop.errors.run_cli`), argparse's mistakes included
(:class:`dali_gop.errors.ArgumentParser`)."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from dali_gop.errors import ArgumentParser, run_cli

__all__ = ["ArgumentParser", "entry"]


def entry(main: Callable[[Sequence[str] | None], int | None], prog: str) -> None:
    sys.exit(run_cli(main, prog=prog))
