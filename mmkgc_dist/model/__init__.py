"""Model math: fusion, scoring, generator, losses. No torch.distributed / torchrec / deepspeed here.

Everything consumes looked-up embedding rows (tensors), never table ids, so the table lookup
(local ``nn.Embedding`` or TorchRec sharded tables) is swappable.
"""
import torch as _torch

_torch.set_flush_denormal(True)      # before torch starts its worker threads: host.py says why
from .fusion import AdaMFFusion, masked_attention
from .generator import ModalityGenerator, MATGenerators
from .losses import self_adversarial_loss, batch_adversarial_loss, pairwise_sigmoid_loss, one_vs_all_loss
from .kernels import DistanceKernels, complex_l1_distance
from .scorers import SCORERS, Scorer, ScoreKernels, make_scorer, register_scorer, RotatE
from .queries import Queries
from .scoring import Scoring
from .regularizers import REGULARIZERS, regularization

__all__ = ["AdaMFFusion", "masked_attention", "ModalityGenerator", "MATGenerators", "self_adversarial_loss",
           "batch_adversarial_loss", "pairwise_sigmoid_loss", "one_vs_all_loss", "DistanceKernels",
           "complex_l1_distance", "SCORERS", "Scorer", "ScoreKernels", "make_scorer", "register_scorer", "RotatE",
           "Queries", "Scoring", "REGULARIZERS", "regularization"]
