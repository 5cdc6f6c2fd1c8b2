"""Slurm: job scripts (train.sbatch, tune.sbatch) and the commands that render and submit them."""
