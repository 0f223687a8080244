"""`fast3r-jax convert SRC OUT [--config SPEC] [--seed N] [--overwrite]`: an official Fast3R (or DUSt3R) PyTorch
checkpoint to a fast3r-jax checkpoint folder (fast3r_jax.convert.converter), without torch."""

from __future__ import annotations

import argparse
import json
import pathlib

from fast3r_jax.config import PRESETS
from fast3r_jax.convert import converter
from fast3r_jax.convert.readers import CheckpointFormatError, UnsafeCheckpointError
from fast3r_jax.errors import InputError
from fast3r_jax.model.params import CheckpointMismatchError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = converter.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("src", help="HF snapshot folder, .safetensors, .pth/.bin or Lightning .ckpt")
    p.add_argument("out", help="output checkpoint folder (must not exist unless --overwrite)")
    p.add_argument("--config", default=None,
                   help=f"model config when SRC has no config.json: a preset ({', '.join(PRESETS)}), a Python "
                        "config file (configs/fast3r_large.py, optionally :variant) or a config.json (default large)")
    p.add_argument("--seed", type=int, default=0, help="init seed for parts a DUSt3R checkpoint lacks")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if this tool wrote it")


def run(args: argparse.Namespace) -> int:
    try:
        report = converter.convert(args.src, args.out, args.config, args.seed, args.overwrite)
    except (CheckpointFormatError, CheckpointMismatchError, UnsafeCheckpointError) as err:
        raise InputError(f"{args.src}: {err}") from err
    print(json.dumps(report, indent=1))
    print(f"wrote {pathlib.Path(args.out).absolute()}")
    return 0
