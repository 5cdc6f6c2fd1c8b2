"""mmkgc-dist: distributed AdaMF-MAT training for multi-modal knowledge graph completion."""
from .host import flush_denormals as _flush_denormals

__version__ = "0.1.0"
_flush_denormals()          # before torch starts its worker threads (see host.py)


def load_run(run_dir: str, checkpoint: str | None = None, device: str = "auto", overrides=()):
    """A trained run's model in this process (``predict``, ``score``, ``neighbours``); see predict.py."""
    from .predict import load_run as load
    return load(run_dir, checkpoint, device, overrides)


def read_embeddings(path: str):
    """An export folder (``mmkgc-dist export``) as arrays ordered by id, with a ``score`` method; see export.py."""
    from .export import read_embeddings as read
    return read(path)
