"""The model a config describes, assembled on a runtime: which modalities it fuses, its scoring function, and the
runtime's tables, fusion and (when training with MAT) generators built for them. The trainer and the trained
model (``serving.trained``) both assemble here, so a checkpoint always loads into the model that wrote it, and a
config the model cannot be built from fails with the same one-line ``ConfigError`` in either."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import compile_on, fused_modalities
from ..errors import ConfigError
from .scoring import Scoring


@dataclass
class AssembledModel:
    modalities: list[str]          # the modalities fused, in the config's order
    scoring: Scoring
    use_mat: bool                  # MAT generators built (training with mat.enabled and a modality to fuse)


def assemble_model(cfg, data, runtime, training: bool,
                   before_build: Callable[[dict, bool], None] | None = None) -> AssembledModel:
    """Build ``cfg``'s model for ``data`` on ``runtime`` (``runtime.build``). ``training``: with the MAT
    generators when the config asks for them (a trained model for answers has none). ``before_build(feature
    dims, use_mat)`` runs before any table is allocated (the trainer's memory check)."""
    modalities = fused_modalities(cfg, data.features)
    try:
        scoring = Scoring.build(cfg.model, data.num_relations, len(modalities), compile_on(cfg, runtime.device))
    except (LookupError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if training and cfg.model.structure_dropout and not modalities:
        raise ConfigError(f"model.structure_dropout={cfg.model.structure_dropout}: a structure-only model has "
                          f"nothing to fuse in its place; fuse a modality or set it to 0")
    use_mat = training and cfg.mat.enabled and bool(modalities)
    if use_mat and scoring.scorer.fusion != "adamf":
        raise ConfigError(f"mat.enabled: MAT fuses generated modalities with AdaMF; model.scoring="
                          f"{cfg.model.scoring} is a baseline with its own fusion — set mat.enabled=false")
    features = {m: data.features[m] for m in modalities}
    if before_build is not None:
        before_build({m: f.dim for m, f in features.items()}, use_mat)
    runtime.build(data, features, modalities, scoring, use_mat)
    return AssembledModel(modalities, scoring, use_mat)
