"""Every error the tool raises on purpose, in one place (no imports: the command line catches them cheaply).

A ``UserError`` is something the user can fix — bad input, a bad config, an output folder that is not ours, a
checkpoint that cannot be used. Its message names the file, row, field or key and what was expected; the command
line prints it as one line and exits 2. Subclasses exist where a caller branches on the kind.
"""


MESSAGE_LIMIT = 2000      # characters of an error message: one that quotes a hostile input stays readable


class UserError(ValueError):
    """A problem the user can fix; the message alone says what and where (the CLI prints it, exit code 2).
    A message over ``MESSAGE_LIMIT`` characters (a quoted input) is cut in the middle, saying how much."""

    def __init__(self, message="", *args):
        text = str(message)
        if len(text) > MESSAGE_LIMIT:
            head, tail = text[:MESSAGE_LIMIT - 300], text[-200:]
            text = f"{head} ... [{len(text) - len(head) - len(tail)} characters cut] ... {tail}"
        super().__init__(text, *args)


class ConfigError(UserError):
    """A config key, value or command-line option that cannot be used."""


class DataError(UserError):
    """Bad input data: the message names the file and the row, field or count that is wrong."""


class OutputError(UserError):
    """Where the tool writes: a folder that is not ours, a link, a held lock, a full disk, a file that would be
    overwritten."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, damaged, another format, or another model's."""


class QueryError(UserError):
    """A question to a trained model that cannot be answered: an unknown name, an id out of range, a bad option."""


class TrialsFailed(UserError):
    """Every trial a study worker ran failed: it exits non-zero with the reasons counted."""


class TrainingDiverged(UserError):
    """The training loss is NaN/inf: the model's parameters can no longer be trusted, so training stops."""


class NonFiniteModel(UserError):
    """The model's scores are NaN/inf. Every comparison with NaN is false, so ranking such a model would report
    a perfect MRR of 1.0 — refused instead."""


class TrialFailed(Exception):
    """A study's trial that could not finish (its reason is the trial's ``failure`` attribute); the study goes on
    (a worker's control flow, never shown to the user as an error)."""


class RunInterrupted(Exception):
    """SIGTERM (what Slurm and torchrun send first) stopped training at a step boundary; the message says which
    checkpoint holds the run. Not an error of the user's: the command exits 143 (128 + SIGTERM)."""
