"""Losses of AdaMF-MAT: the self-adversarial sigmoid loss and the adversarial pair loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def self_adversarial_loss(positive: Tensor, negative: Tensor, temperature: float) -> Tensor:
    """L = −½ [mean log σ(f⁺) + mean_i Σ_j softmax_j(α f⁻_ij)·log σ(−f⁻_ij)], weights detached."""
    weights = torch.softmax(temperature * negative.detach(), dim=-1)
    negative_term = (weights * F.logsigmoid(-negative)).sum(-1).mean()
    return -0.5 * (F.logsigmoid(positive).mean() + negative_term)


def pairwise_sigmoid_loss(better: Tensor, worse: Tensor) -> Tensor:
    """L(better, worse) = −½ [mean log σ(better) + mean log σ(−worse)].

    Discriminator: L(f⁺, f_fake) (real triples should outscore fakes);
    generator: L(f_fake, f⁺) (fakes should look as plausible as real triples).
    """
    return -0.5 * (F.logsigmoid(better).mean() + F.logsigmoid(-worse).mean())
