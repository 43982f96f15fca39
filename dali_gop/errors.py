"""What dali-gop raises when the user can act, and how a command line reports it.

Every error here carries a message that names the file, clip or option at fault and says what to
do; a command line prints that message as one line. Anything else that escapes is a bug of ours
and keeps its traceback.

stdlib only: preprocess and DALI's worker processes import it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence


class DaliGopError(Exception):
    """Base of the errors a user can act on; the message says how."""


class FormatError(DaliGopError, ValueError):
    """Something on disk is not what the format promises. The message names the file."""


class ConfigError(DaliGopError, ValueError):
    """An option, or a dataset, that the loader cannot serve as asked. Raised before any work."""


class DecodeError(DaliGopError, RuntimeError):
    """A bin decoded to other frames than its index promises, or a decoder lost its place."""


class WorkerError(DaliGopError, RuntimeError):
    """A reader process died, or made no progress for ``worker_timeout`` seconds."""


DEBUG_ENV = "DALI_GOP_DEBUG"


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the command lines: its mistakes raised as :class:`ConfigError` (one line through
    :func:`run_cli`, not usage + exit), and ``--debug``."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)
        self.add_argument("--debug", action="store_true",
                          help=f"show the traceback of an error (also {DEBUG_ENV}=1)")

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            prog: str | None = None) -> int:
    """Run a command line's ``main`` and turn what the user can fix into one line on stderr.

    Exit status: ``main``'s, 2 for a user error, 130 for Ctrl-C. ``--debug`` or
    ``DALI_GOP_DEBUG=1`` lets the traceback through.
    """
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        if debug_requested(argv):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (DaliGopError, OSError) as e:
        if debug_requested(argv):
            raise
        message = str(e) if isinstance(e, DaliGopError) else _os_error_line(e)
        print(f"{prog}: error: {message} (--debug or {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 2


def _os_error_line(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"
