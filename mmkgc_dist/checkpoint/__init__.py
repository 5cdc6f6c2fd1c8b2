"""Checkpoints, in one package: ``format`` (what one checkpoint holds; save and load through a runtime's
``checkpoint_state``/``restore_state``), ``catalogue`` (a run's checkpoints: listing, verification, fallback,
retention, the model-selection pointer ``best.json``, interrupted writes), ``safe_load`` (loading that never
executes code from a file). Layout and guarantees: docs/checkpoint-format.md."""
from .catalogue import (BEST, Checkpoint, checkpoint_at, clean_temporaries, delete, keep_selected, latest,
                        list_checkpoints, newest_verified, prune, read_selection, selected_checkpoint, verify, write_selection)
from .format import load, save

__all__ = ["BEST", "Checkpoint", "checkpoint_at", "clean_temporaries", "delete", "keep_selected", "latest", "list_checkpoints",
           "newest_verified", "prune", "read_selection", "selected_checkpoint", "verify", "write_selection", "load",
           "save"]
