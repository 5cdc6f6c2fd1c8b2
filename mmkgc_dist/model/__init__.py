"""Model math: fusion, scoring, generator, losses. No torch.distributed / torchrec / deepspeed here.

Everything consumes looked-up embedding rows (tensors), never table ids, so the table lookup
(local ``nn.Embedding`` or TorchRec sharded tables) is swappable.
"""
import torch as _torch

_torch.set_flush_denormal(True)      # before torch starts its worker threads: host.py says why
from .fusion import AdaMFFusion, masked_attention
from .generator import ModalityGenerator, MATGenerators
from .losses import self_adversarial_loss, batch_adversarial_loss, pairwise_sigmoid_loss
from .scoring import RotatE, complex_l1_distance
from .kernels import DistanceKernels

__all__ = ["AdaMFFusion", "masked_attention", "ModalityGenerator", "MATGenerators", "self_adversarial_loss",
           "batch_adversarial_loss", "pairwise_sigmoid_loss", "RotatE", "complex_l1_distance", "DistanceKernels"]
