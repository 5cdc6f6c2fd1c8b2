"""Training: the discriminator-then-generator step, the loop, checkpoints and metrics."""
