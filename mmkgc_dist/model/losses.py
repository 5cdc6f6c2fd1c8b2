"""Losses of AdaMF-MAT: the self-adversarial sigmoid loss and the adversarial pair loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mean(x: Tensor) -> Tensor:
    """The mean, and 0 (still in the graph) for no elements: a rank may hold none of a small global batch."""
    return x.mean() if x.numel() else x.sum()


def self_adversarial_loss(positive: Tensor, negative: Tensor, temperature: float) -> Tensor:
    """L = −½ [mean log σ(f⁺) + mean_i Σ_j softmax_j(α f⁻_ij)·log σ(−f⁻_ij)], weights detached."""
    weights = torch.softmax(temperature * negative.detach(), dim=-1)
    negative_term = mean((weights * F.logsigmoid(-negative)).sum(-1))
    return -0.5 * (mean(F.logsigmoid(positive)) + negative_term)


def batch_adversarial_loss(better: Tensor, worse: Tensor, worse_weights: Tensor) -> Tensor:
    """The discriminator's adversarial term as the released code computes it:
    L = −½ [mean log σ(better) + Σ_b w_b log σ(−worse_b)], w = softmax over the batch of α·worse (detached).

    The reference applies its self-adversarial SigmoidLoss to one fake score per positive, so the softmax that
    weights negatives runs over the *batch of fakes*: the most plausible fakes weigh most. ``worse_weights``
    comes from the caller, normalised over the global batch (the same at any world size).
    """
    return -0.5 * (mean(F.logsigmoid(better)) + (worse_weights * F.logsigmoid(-worse)).sum())


def pairwise_sigmoid_loss(better: Tensor, worse: Tensor) -> Tensor:
    """L(better, worse) = −½ [mean log σ(better) + mean log σ(−worse)].

    Generator: L(f_fake, f⁺) (fakes should look as plausible as real triples) — the reference's form, where the
    positive scores have shape [batch, 1] and its softmax over one element weighs each by 1. Discriminator with
    ``mat.adversarial_loss=mean``: L(f⁺, f_fake) (real triples should outscore fakes).
    """
    return -0.5 * (mean(F.logsigmoid(better)) + mean(F.logsigmoid(-worse)))


def one_vs_all_loss(target: Tensor, log_normaliser: Tensor, candidate_mean: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy of each query over every entity, from its parts so the candidates may live on many ranks:
    ``target`` the answer's score [Q], ``log_normaliser`` log Σ_e exp(score_e) [Q], ``candidate_mean`` the mean
    score over all entities [Q]. Label smoothing ε spreads ε of the target mass uniformly over the entities:
    CE = lse − (1 − ε)·s_answer − ε·mean_e s_e. Returns the mean over queries."""
    return mean(log_normaliser - (1.0 - smoothing) * target - smoothing * candidate_mean)
