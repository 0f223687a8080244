"""`fast3r-jax train [--config SPEC] [--set NAME=VALUE ...]`: train (or resume) a Fast3R model
(fast3r_jax.train.loop).

--config is a Python file whose get_config() returns a TrainConfig (`path.py`, or `path.py:variant` for
get_config("variant"); default: configs/train_tiny.py); every field can be overridden with --set dotted.name=value
(a Python literal of the field's type; bare words are text). Re-running with the same workdir resumes from its latest
checkpoint (also with another process count).
"""

from __future__ import annotations

import argparse
import pathlib

from fast3r_jax import compilation_cache, distributed
from fast3r_jax.cli import EXIT_FAILURE, EXIT_SIGTERM, error, note
from fast3r_jax.config import TrainConfig, load_config_file
from fast3r_jax.errors import InputError

DEFAULT_CONFIG = pathlib.Path(__file__).parents[2] / "configs" / "train_tiny.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config file (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a config field, e.g. --set optimizer.lr=3e-4 (repeatable)")
    compilation_cache.add_argument(p)  # a resumed or repeated run loads its compiled steps instead of compiling
    distributed.add_arguments(p)


def load(spec: str, overrides: list[str]) -> TrainConfig:
    """The TrainConfig of `spec` with the `NAME=VALUE` overrides applied, every value type-checked."""
    from fast3r_jax.train.loop import override  # noqa: PLC0415  (imports jax)

    cfg = load_config_file(spec, expect=TrainConfig)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set expects NAME=VALUE, got {item!r}")
        cfg = override(cfg, name.strip(), value.strip())
    return cfg


def run(args: argparse.Namespace) -> int:
    from fast3r_jax.train.loop import NonFiniteLossError, TrainingInterrupted, train  # noqa: PLC0415

    distributed.initialize_from_args(args)
    cfg = load(args.config, args.set)
    compilation_cache.enable(args.compilation_cache)
    try:
        metrics = train(cfg)
    except NonFiniteLossError as err:  # the run failed; its last good checkpoint stays
        error(str(err))
        return EXIT_FAILURE
    except TrainingInterrupted as err:  # not finished, but nothing lost: exits as a process ended by SIGTERM
        note(str(err))
        return EXIT_SIGTERM
    if distributed.is_lead():
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        print(f"run written to {pathlib.Path(cfg.workdir).absolute()}")
    return 0
