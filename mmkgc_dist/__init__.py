"""mmkgc-dist: distributed AdaMF-MAT training for multi-modal knowledge graph completion."""
import sys as _sys

__version__ = "0.1.0"
if "torch" in _sys.modules:         # torch came first: flush before its worker threads start (see host.py)
    from .training.host import flush_denormals as _flush_denormals
    _flush_denormals()


def load_run(run_dir: str, checkpoint: str | None = None, device: str = "auto", overrides=(), **encoders):
    """A trained run's model in this process (``predict``, ``score``, ``neighbours``, also for entities the graph
    does not hold, by their text or image); ``encoders``: ``text_model``, ``image_encoder``, ``image_weights``
    where the dataset's features were not made by the packaged models. See predict.py."""
    from .serving.predict import load_run as load
    return load(run_dir, checkpoint, device, overrides, **encoders)


def read_embeddings(path: str, verify: bool = True):
    """An export folder (``mmkgc-dist export``) as arrays ordered by id, with a ``score`` method, every file checked
    against export.json's records (``verify``: digests too); see export.py."""
    from .serving.export import read_embeddings as read
    return read(path, verify)


def train(config=None, overrides=None, run_dir: str | None = None, **kwargs):
    """Train a run as ``mmkgc-dist train`` does; a ``TrainResult`` (metrics, selection, run folder, model). See api.py."""
    from .api import train as run
    return run(config, overrides, run_dir, **kwargs)


def evaluate(run_dir: str, splits=None, **kwargs):
    """A run folder's model ranked on ``splits`` as ``mmkgc-dist evaluate`` does: {split: metrics}. See api.py."""
    from .api import evaluate as run
    return run(run_dir, splits, **kwargs)


def tune(space, study_dir: str, config=None, overrides=None, trials: int = 20, **options):
    """A worker of a hyperparameter study as ``mmkgc-dist tune`` runs it; a ``StudyResult``. See api.py."""
    from .api import tune as run
    return run(space, study_dir, config, overrides, trials, **options)


def compare(*paths, plot: str | None = "compare.png") -> list[dict]:
    """Runs (or a study's trials) side by side as ``mmkgc-dist compare`` shows them; their validation curves
    into ``plot``. See api.py."""
    from .api import compare as run
    return run(*paths, plot=plot)


def verify(path: str) -> dict:
    """Every file of a dataset, run folder or export against its recorded bytes and SHA-256, as ``mmkgc-dist
    verify`` does: {kind, path, checked, problems}. See api.py."""
    from .api import verify as run
    return run(path)
