"""A trained run's model without a trainer: what ``evaluate``, ``export`` and ``predict`` (``load_run``) use.

It holds a built runtime with the checkpoint's tables and fusion weights (no optimizer state, no MAT generators:
nothing here trains), the scoring function, the dataset with its names and identity, and an ``eval.Evaluator``.
Loading imports neither the trainer nor DeepSpeed, tunes no allocator and builds no sampler. A checkpoint of any
world size loads, in one process or on the ranks the command was launched on (one checkpoint format).
"""
from __future__ import annotations

import logging
import os
import socket

import torch

from .. import checkpoint
from ..config import Config, load_config
from ..data.build import build_dataset
from ..data.format import KGData, read_manifest
from ..data.training_statistics import TrainingStatistics
from ..errors import CheckpointError, DataError
from ..eval.evaluator import Evaluator
from ..model import Scoring
from ..model.assembly import assemble_model
from ..outputs import FolderLock, local_path, pid_alive, resolve_output
from ..parallel import make_runtime
from ..run_folder import check_dataset, dataset_location, open_for_reading
from ..runtime import Runtime

log = logging.getLogger("mmkgc_dist")
LOAD_ATTEMPTS = 5            # checkpoints chosen again when a training run prunes the chosen one under the reader


class TrainedModel:
    def __init__(self, cfg: Config, data: KGData, runtime: Runtime, scoring: Scoring, modalities: list[str],
                 step: int, source: str, run_dir: str | None = None):
        self.cfg, self.data, self.runtime, self.run_dir = cfg, data, runtime, run_dir
        self.scoring, self.modalities = scoring, modalities
        self.step, self.source = step, source           # the checkpoint's step and folder
        manifest = read_manifest(cfg.data.path) if cfg.data.loader == "stream" else None
        self.statistics = TrainingStatistics(data, cfg.data.path, manifest)
        self.evaluator = Evaluator(cfg, data, runtime, scoring, self.statistics)

    @property
    def identity(self) -> str:
        """The dataset version's identity (the SHA-256 of its manifest), recorded by the run."""
        return self.data.identity

    def evaluate(self, split: str, ties: str | None = None) -> dict:
        """Filtered ranking of ``split`` (eval.protocol of the run's config)."""
        return self.evaluator.evaluate(split, ties=ties)

    def export(self, out_dir: str, neighbour_index: bool = False) -> dict:
        """Every entity's and relation's vectors as Parquet with export.json (export.py); ``neighbour_index``: and
        a FAISS index of the joint rows."""
        from .export import export_embeddings
        return export_embeddings(self.runtime, self.data.entity_names, self.modalities, self.step, out_dir,
                                 self.data.relation_names, self.scoring, neighbour_index=neighbour_index,
                                 added=self.added_rows())

    def added_rows(self) -> dict | None:
        """The run's added entities (added.py) fused from their content: names, zero structural rows, joint rows,
        AdaMF weights; None when it has none."""
        from .added import read_added
        from .content import added_contents, fuse_contents

        names, features = read_added(self.run_dir, self.identity) if self.run_dir else ([], {})
        if not names:
            return None
        width = self.scoring.scorer.width          # of the structural rows (the dense model is on every rank)
        dims = {m: self.data.features[m].dim for m in self.modalities}
        joint, weights = fuse_contents(self.runtime, width, dims, added_contents(names, features))
        return {"names": names, "structural": torch.zeros(len(names), width), "joint": joint.cpu(),
                "weights": weights}


def load_trained(run_dir: str, checkpoint_path: str | None = None, overrides=(), distributed: bool = False,
                 env=None) -> TrainedModel:
    """The model of a run folder — at ``checkpoint_path``, else the one model selection chose (best.json), else
    the newest verified — on a local or a distributed runtime. The dataset must be the version the run trained
    on (``RUN/dataset.json``)."""
    cfg, ckpt = trained_checkpoint(run_dir, checkpoint_path, overrides)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = build_dataset(cfg, feature_values=not distributed)      # ranks read their own feature rows
    check_dataset(run_dir, data, dataset_location(cfg))
    runtime = make_runtime(cfg, distributed, env)
    model = assemble_model(cfg, data, runtime, training=False)
    for attempt in range(LOAD_ATTEMPTS):
        try:
            cursor = checkpoint.load(runtime, ckpt.path, cfg.data.loader == "stream", optimizer=False)
            break
        except Exception:                                 # noqa: BLE001 — a vanished checkpoint is retried below
            if checkpoint_path is not None or os.path.isdir(ckpt.path) or attempt == LOAD_ATTEMPTS - 1:
                raise
            # a training run pruned it between the choice and the load: choose again among what is there now
            log.info("checkpoint %s was removed while it was being read (the run is training); choosing again",
                     ckpt.path)
            ckpt = trained_checkpoint(run_dir, None, overrides)[1]
    log.info("loaded %s (epoch %d, step %d)", ckpt.path, cursor["epoch"], cursor["step"])
    return TrainedModel(cfg, data, runtime, model.scoring, model.modalities, cursor["step"], ckpt.path, run_dir)


def trained_checkpoint(run_dir: str, checkpoint_path: str | None, overrides) -> tuple[Config, checkpoint.Checkpoint]:
    """(config, verified checkpoint) of a run folder: the given checkpoint, else the one model selection chose
    (best.json), else the newest verified one."""
    open_for_reading(run_dir)
    cfg = load_config(os.path.join(run_dir, "config.yaml"), overrides)
    path = cfg.data.path
    local = local_path(path)
    if cfg.data.source == "parquet" and local is not None and not os.path.exists(local_path(resolve_output(path))):
        raise DataError(f"{run_dir}: trained on data.path={path}, which is not found from here (a path relative "
                        f"to where training ran?); give the dataset's location with --data.path=...")
    if checkpoint_path is not None:
        return cfg, checkpoint.checkpoint_at(checkpoint_path)
    directory = os.path.join(run_dir, "checkpoints")
    best = checkpoint.selected_checkpoint(directory)
    if best is not None:                 # the model the run's selection chose, and tested
        try:
            ckpt = checkpoint.checkpoint_at(os.path.join(directory, best))
            log.info("using %s, the checkpoint model selection chose (checkpoints/best.json; --checkpoint for "
                     "another)", ckpt.path)
            return cfg, ckpt
        except CheckpointError as exc:
            log.warning("the selected checkpoint cannot be used (%s); using the newest verified one", exc)
    ckpt = checkpoint.newest_verified(directory)
    if ckpt is None:
        holder = FolderLock(run_dir).holder()
        if holder.get("pid") and (holder.get("host") != socket.gethostname() or pid_alive(holder["pid"])):
            raise CheckpointError(f"{run_dir}: the run is training (pid {holder['pid']} on {holder.get('host')}) and "
                                  f"has not written a verified checkpoint yet; try again after its first checkpoint "
                                  f"(train.checkpoint_every / checkpoint_every_steps)")
        raise CheckpointError(f"{run_dir}/checkpoints: no complete, verified checkpoint found")
    return cfg, ckpt
