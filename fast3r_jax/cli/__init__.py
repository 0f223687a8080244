"""The `fast3r-jax` command: one program, one subcommand per job.

    fast3r-jax [--debug] COMMAND [options]

Each command lives in its own module of this package (`add_arguments(parser)` and `run(args) -> int`), imported only
when it is the one asked for, so that a command pays for no other command's imports. Exit status, the same for
every command: 0 done; 2 bad input (one line `fast3r-jax: error: ...` naming the file, folder or field); 1 an
internal failure (with its traceback). `--debug` shows the traceback for bad input too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import math
import sys
from typing import Sequence

from fast3r_jax.errors import InputError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_SIGTERM = 128 + 15  # a run stopped by SIGTERM after saving what it had: as shells report that signal

COMMANDS = {  # name: (module, one-line help)
    "reconstruct": ("fast3r_jax.cli.reconstruct", "point cloud and cameras from images or videos"),
    "train": ("fast3r_jax.cli.train", "train or resume a model (train.py)"),
    "evaluate": ("fast3r_jax.cli.evaluate", "benchmark a checkpoint on pose and reconstruction datasets (evaluate.py)"),
    "convert": ("fast3r_jax.cli.convert", "official PyTorch checkpoint -> fast3r-jax checkpoint"),
    "view": ("fast3r_jax.cli.view", "interactive 3D viewer of a reconstruction folder"),
    "demo": ("fast3r_jax.cli.demo", "web app: upload images or a video, see and download the reconstruction"),
}

# Operating-system errors that are the user's to fix (a missing, unreadable or full target), not bugs.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
# The same, raised by our readers with a message and no errno.
_USER_OS_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


def note(message: str) -> None:
    """A note for the user on standard error."""
    print(f"fast3r-jax: {message}", file=sys.stderr)


def error(message: str) -> int:
    """Prints the one-line error and returns EXIT_USAGE."""
    print(f"fast3r-jax: error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_USAGE


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def count(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan or inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def percentile(text: str) -> float:
    """argparse type: a number in [0, 100]."""
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must lie in [0, 100], got {text}")
    return value


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only `command`'s own arguments are added (all of them when None)."""
    p = argparse.ArgumentParser(prog="fast3r-jax", description="Fast3R 3D reconstruction in JAX.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for bad input too")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            importlib.import_module(module).add_arguments(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in COMMANDS), None)
    args = parser(chosen or "").parse_args(argv)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except InputError as err:
        if args.debug:
            raise
        return error(str(err))
    except OSError as err:
        if args.debug or not (err.errno in _USER_ERRNOS or isinstance(err, _USER_OS_ERRORS)):
            raise
        return error(f"{err.filename}: {err.strerror}" if err.filename else str(err))

