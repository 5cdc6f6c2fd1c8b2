"""Filtered ranking on a tiny graph with known answers, both tie policies."""
import numpy as np
import torch

from mmkgc_dist.eval.ranking import FilterIndex, filtered_ranks, link_prediction_metrics, ranks_from_distances
from mmkgc_dist.model import DistanceKernels, RotatE


def test_ranks_from_distances_ties_and_filter():
    dist = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.5]])
    target = torch.tensor([2])
    # entity 4 (better) is filtered; entity 1 better; entity 3 ties with the target.
    rows, cols = torch.tensor([0]), torch.tensor([4])
    assert ranks_from_distances(dist, target, rows, cols, "optimistic").item() == 2.0
    assert ranks_from_distances(dist, target, rows, cols, "pessimistic").item() == 3.0
    assert ranks_from_distances(dist, target, rows, cols, "realistic").item() == 2.5


def test_filter_index_pairs():
    known = np.array([[0, 0, 1], [0, 0, 2], [1, 0, 2], [0, 1, 3]])
    idx = FilterIndex(known, num_relations=2, anchor_col=0, answer_col=2)
    rows, cols = idx.pairs(np.array([0, 1, 2]), np.array([0, 0, 0]))
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (0, 2), (1, 2)]


def test_filtered_ranks_known_answers():
    # dim 1 RotatE with zero phases: distance = |e_a − e_b| on the complex plane.
    rot = RotatE(dim=1, gamma=1.0)
    joint = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    relations = torch.zeros(1, 1)
    test = np.array([[0, 0, 2]])                 # query (0, r, ?) true answer 2 at distance 2
    known = np.array([[0, 0, 2], [0, 0, 1]])     # entity 1 is a known answer: filtered
    kern = DistanceKernels(compile=False)
    # Candidates by distance from entity 0: e0 0, e1 1 (filtered), e3 1, e2 2 (target), e4 3.
    opt = filtered_ranks(joint, relations, rot, test, known, kern, ties="optimistic")
    assert opt["tail"].tolist() == [3.0]         # e0 and e3 strictly better
    # Head direction: (?, r, 2) from entity 2; only the target 0 is a known head of (·, r, 2).
    real = filtered_ranks(joint, relations, rot, test, known, kern, ties="realistic")
    # head query anchors at e2: distances e0 2 (target), e1 1, e3 1, e4 1, e2 0 → better 4, no filter
    assert real["head"].tolist() == [5.0]
    m = link_prediction_metrics(real)
    assert abs(m["mrr"] - (1 / 3 + 1 / 5) / 2) < 1e-9 and m["hits@3"] == 0.5


def test_tie_policies_differ_only_on_ties():
    rot = RotatE(dim=1, gamma=1.0)
    joint = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    test = np.array([[0, 0, 1]])
    kern = DistanceKernels(compile=False)
    o = filtered_ranks(joint, torch.zeros(1, 1), rot, test, test, kern, ties="optimistic")["tail"][0]
    p = filtered_ranks(joint, torch.zeros(1, 1), rot, test, test, kern, ties="pessimistic")["tail"][0]
    r = filtered_ranks(joint, torch.zeros(1, 1), rot, test, test, kern, ties="realistic")["tail"][0]
    assert (o, p, r) == (2.0, 4.0, 3.0)          # e0 better; e2, e3 tie with the target
