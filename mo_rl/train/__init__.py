"""The training loop, its loss and checkpoints."""
