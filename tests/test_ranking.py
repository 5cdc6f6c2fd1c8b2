"""Filtered ranking on a tiny graph with known answers, both tie policies."""
import numpy as np
import pytest
import torch

from mmkgc_dist.eval.metrics import link_prediction_metrics
from mmkgc_dist.eval.engine import filtered_ranks
from mmkgc_dist.eval.ranking import FilterIndex, ranks_from_distances
from mmkgc_dist.errors import NonFiniteModel
from mmkgc_dist.model import DistanceKernels, Queries, RotatE, Scoring, complex_l1_distance


def rotate_scoring(dim: int = 1, gamma: float = 1.0, num_relations: int = 1) -> Scoring:
    rot = RotatE(dim=dim, gamma=gamma)
    return Scoring(rot, Queries(rot, num_relations), rot.kernels())


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
    rot = rotate_scoring()
    joint = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    relations = torch.zeros(1, 1)
    test = np.array([[0, 0, 2]])                 # query (0, r, ?) true answer 2 at distance 2
    known = np.array([[0, 0, 2], [0, 0, 1]])     # entity 1 is a known answer: filtered
    # Candidates by distance from entity 0: e0 0, e1 1 (filtered), e3 1, e2 2 (target), e4 3.
    opt = filtered_ranks(joint, relations, rot, test, known, ties="optimistic")
    assert opt["tail"].tolist() == [3.0]         # e0 and e3 strictly better
    # Head direction: (?, r, 2) from entity 2; only the target 0 is a known head of (·, r, 2).
    real = filtered_ranks(joint, relations, rot, test, known, ties="realistic")
    # head query anchors at e2: distances e0 2 (target), e1 1, e3 1, e4 1, e2 0 → better 4, no filter
    assert real["head"].tolist() == [5.0]
    m = link_prediction_metrics(real)
    assert abs(m["mrr"] - (1 / 3 + 1 / 5) / 2) < 1e-9 and m["hits@3"] == 0.5


def test_tie_policies_differ_only_on_ties():
    rot = rotate_scoring()
    joint = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    test = np.array([[0, 0, 1]])
    o = filtered_ranks(joint, torch.zeros(1, 1), rot, test, test, ties="optimistic")["tail"][0]
    p = filtered_ranks(joint, torch.zeros(1, 1), rot, test, test, ties="pessimistic")["tail"][0]
    r = filtered_ranks(joint, torch.zeros(1, 1), rot, test, test, ties="realistic")["tail"][0]
    assert (o, p, r) == (2.0, 4.0, 3.0)          # e0 better; e2, e3 tie with the target


def test_candidate_counts_and_amri():
    """Each query's candidates are the entities not filtered out (its own answer counted); AMRI is 1 for
    perfect ranks, about 0 for the ranks a random scorer gets."""
    rot = rotate_scoring()
    joint = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    test = np.array([[0, 0, 2]])
    known = np.array([[0, 0, 2], [0, 0, 1]])
    ranks = filtered_ranks(joint, torch.zeros(1, 1), rot, test, known)
    assert ranks["tail_candidates"].tolist() == [4] and ranks["head_candidates"].tolist() == [5]
    from mmkgc_dist.eval.metrics import summarize
    assert summarize(np.ones(10), np.full(10, 101))["amri"] == 1.0
    random = np.random.default_rng(0).integers(1, 102, size=200_000)      # uniform ranks over 101 candidates
    assert abs(summarize(random, np.full(len(random), 101))["amri"]) < 0.01
    assert summarize(np.array([1, 4, 20]), hits_at=(2, 5))["hits@5"] == 2 / 3


def test_relation_categories_and_breakdowns():
    from mmkgc_dist.data.statistics import exact_relation_table
    from mmkgc_dist.eval.metrics import markdown_report, relation_categories
    train = np.array([[0, 0, 1], [2, 0, 3],                    # 1-1
                      [0, 1, 1], [0, 1, 2], [0, 1, 3],          # 1-N: one head, three tails
                      [1, 2, 0], [2, 2, 0], [3, 2, 0],          # N-1
                      [0, 3, 1], [0, 3, 2], [1, 3, 1], [1, 3, 2]])   # N-N
    cats = relation_categories(exact_relation_table(train, 4))
    assert cats.tolist() == ["1-1", "1-N", "N-1", "N-N"]
    triples = np.array([[0, 0, 1], [0, 1, 2], [1, 2, 0], [0, 3, 2], [2, 3, 1]])
    ranks = {"tail": np.array([1.0, 2, 4, 1, 3]), "head": np.array([1.0, 1, 2, 5, 1]),
             "tail_candidates": np.full(5, 10), "head_candidates": np.full(5, 10)}
    m = link_prediction_metrics(ranks, triples, (1, 3), ["r0", "r1", "r2", "r3"], cats)
    assert m["per_category"]["N-N"]["count"] == 4 and m["per_category"]["N-N"]["tail"]["mr"] == 2.0
    assert m["per_relation"]["r3"]["category"] == "N-N" and m["per_relation"]["r1"]["hits@1"] == 0.5
    assert sum(v["count"] for v in m["per_category"].values()) == m["count"] == 10
    assert set(m) >= {"mrr", "mr", "hits@1", "hits@3", "amri", "tail", "head"} and "hits@10" not in m
    report = markdown_report({"test": {**m, "protocol": "filtered", "ties": "realistic"}})
    assert "| N-N tail |" in report and "| r3 | N-N |" in report


def test_a_model_with_nan_parameters_is_refused_not_ranked_first():
    """NaN distances compare false with everything, so a diverged model would rank every answer first (MRR 1.0,
    seen on a DB15K run whose training had diverged); ranking refuses it with an error that says why. One NaN
    candidate row is enough, as is a NaN answer."""
    rot = rotate_scoring()
    relations, test, known = torch.zeros(1, 1), np.array([[0, 0, 2]]), np.array([[0, 0, 2]])
    for poisoned in (4, 2):                      # a candidate; the answer itself
        joint = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
        joint[poisoned, 0] = float("nan")
        with pytest.raises(NonFiniteModel, match="training diverged"):
            filtered_ranks(joint, relations, rot, test, known)


def test_distance_gradient_is_finite_where_query_meets_target():
    """d|z|/dz at z = 0 is undefined (autograd: inf·0 = NaN); the distances used in training give 0 there."""
    a = torch.tensor([[1.0, 2.0, 0.5, -1.0]], requires_grad=True)
    b = a.detach().clone()
    complex_l1_distance(a, b).sum().backward()
    assert torch.isfinite(a.grad).all()
    rows = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 1.0, 0.0, 1.0]], requires_grad=True)
    query = rows.detach()[:1].clone().requires_grad_(True)
    DistanceKernels(compile=False).chunk_shared(query, rows, torch.tensor([[0, 1]]), 1).sum().backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(rows.grad).all()
