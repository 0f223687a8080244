"""From upstream PyTorch checkpoints to this model: the name/layout table, torch-free readers, the converter."""
