"""Train Fast3R in JAX: the same as `fast3r-jax train` (fast3r_jax/cli/train.py).

    python train.py                                   # tiny model, synthetic scenes, CPU, a few minutes
    python train.py --config configs/train_large.py --set data.batch_size=16 --set workdir=runs/large

Several processes (one program over all their devices, see fast3r_jax/distributed.py):
    python train.py --coordinator-address host0:1234 --num-processes 2 --process-id 0    # on host 0
    python train.py --coordinator-address host0:1234 --num-processes 2 --process-id 1    # on host 1
    srun python train.py --config configs/train_large.py                                # Slurm: detected
"""

import sys

from fast3r_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
