"""Train Fast3R in JAX.

    python train.py                                   # tiny model, synthetic scenes, CPU, a few minutes
    python train.py --config configs/train_large.py --set data.batch_size=16 --set workdir=runs/large

--config names a Python file whose get_config() returns a TrainConfig (default: configs/train_tiny.py);
every field can be overridden with --set dotted.name=value (Python literals; bare words are strings).
Re-running with the same workdir resumes from its latest checkpoint (also with another process count).
Several processes (one program over all their devices, see fast3r_jax/distributed.py):
    python train.py --coordinator-address host0:1234 --num-processes 2 --process-id 0    # on host 0
    python train.py --coordinator-address host0:1234 --num-processes 2 --process-id 1    # on host 1
    srun python train.py --config configs/train_large.py                                # Slurm: detected
"""

import argparse
import importlib.util
import pathlib
import sys

from fast3r_jax import distributed
from fast3r_jax.train.loop import NonFiniteLossError, TrainConfig, override, train

DEFAULT_CONFIG = pathlib.Path(__file__).parent / "configs" / "train_tiny.py"


def load_config(path: pathlib.Path) -> TrainConfig:
    if not path.is_file():
        raise ValueError(f"config file {path} not found")
    sys.path.insert(0, str(path.parent.absolute()))  # configs may import each other
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"{path}: get_config() must return a TrainConfig, got {type(cfg).__name__}")
    return cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=pathlib.Path, default=DEFAULT_CONFIG)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a config field, e.g. --set optimizer.lr=3e-4 (repeatable)")
    distributed.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        distributed.initialize_from_args(args)
        cfg = load_config(args.config)
        for item in args.set:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
            cfg = override(cfg, name.strip(), value.strip())
        metrics = train(cfg)
    except (ValueError, NonFiniteLossError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if distributed.is_lead():
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        print(f"run written to {pathlib.Path(cfg.workdir).absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
