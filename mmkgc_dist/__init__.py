"""mmkgc-dist: distributed AdaMF-MAT training for multi-modal knowledge graph completion."""
import sys as _sys

__version__ = "0.1.0"
if "torch" in _sys.modules:         # torch came first: flush before its worker threads start (see host.py)
    from .host import flush_denormals as _flush_denormals
    _flush_denormals()


def load_run(run_dir: str, checkpoint: str | None = None, device: str = "auto", overrides=()):
    """A trained run's model in this process (``predict``, ``score``, ``neighbours``); see predict.py."""
    from .predict import load_run as load
    return load(run_dir, checkpoint, device, overrides)


def read_embeddings(path: str):
    """An export folder (``mmkgc-dist export``) as arrays ordered by id, with a ``score`` method; see export.py."""
    from .export import read_embeddings as read
    return read(path)
