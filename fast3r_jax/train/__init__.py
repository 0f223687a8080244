"""Training: losses, the optimizer, the sharded train step, the training loop with checkpoints and logs."""
