"""Errors for a model whose numbers went non-finite (no torch import: the command line catches them cheaply)."""


class TrainingDiverged(ValueError):
    """The training loss is NaN/inf: the model's parameters can no longer be trusted, so training stops."""


class NonFiniteModel(ValueError):
    """The model's scores are NaN/inf. Every comparison with NaN is false, so ranking such a model would report
    a perfect MRR of 1.0 — refused instead."""


class RunInterrupted(Exception):
    """SIGTERM (what Slurm and torchrun send first) stopped training at a step boundary; the message says which
    checkpoint holds the run. Not an error of the user's: the command exits 143 (128 + SIGTERM)."""
