"""Training: losses, PD-ADMM and pre-training steps, the loop, checkpoints, validation."""
