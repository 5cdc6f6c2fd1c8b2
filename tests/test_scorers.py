"""The model space: every scoring function through the one seam (plain tensors), the regimes (reciprocal
relations, N3/L2, 1-vs-all), MAT's gradient path, and a scorer defined here — outside the package — trained,
evaluated and predicted with by name."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmkgc_dist.config import load_config
from mmkgc_dist.data.synthetic import generate
from mmkgc_dist.model import SCORERS, Queries, Scorer, make_scorer, one_vs_all_loss, register_scorer, regularization
from mmkgc_dist.compose import local_trainer
from support import MINI, pairs

BUILT_IN = ("rotate", "transe", "distmult", "complex")


def test_the_four_scorers_are_registered_and_unknown_names_are_refused():
    assert set(BUILT_IN) <= set(SCORERS)
    with pytest.raises(LookupError, match="unknown scoring function 'rotatee'; registered: complex, distmult"):
        make_scorer("rotatee", 4, 6.0, 2.0)


def test_hand_computed_scores():
    h, t = torch.tensor([1.0, 2.0, 0.5, -1.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    transe = make_scorer("transe", 2, 6.0, 2.0)
    r = torch.tensor([1.0, -1.0, 0.5, 1.0])                        # h + r − t = (2, 0, 0, 0)
    assert transe.score(h, r, t).item() == pytest.approx(6.0 - 2.0)
    distmult = make_scorer("distmult", 2, 6.0, 2.0)
    r = torch.tensor([2.0, 1.0, 1.0, 3.0])                         # Σ h r t = 0 + 2 + 0.5 + 0
    assert distmult.score(h, r, t).item() == pytest.approx(2.5)
    complex_ = make_scorer("complex", 2, 6.0, 2.0)
    # h = (1 + 0.5i, 2 − i), r = (i, 1), t = (0 + i, 1 + 0i): Re(h1 r1 conj(t1) + h2 r2 conj(t2))
    r = torch.tensor([0.0, 1.0, 1.0, 0.0])
    expected = ((1 + 0.5j) * 1j * np.conj(1j) + (2 - 1j) * 1 * np.conj(1 + 0j)).real
    assert complex_.score(h, r, t).item() == pytest.approx(expected)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_layout_and_direction_gives_the_scorers_own_score(name):
    """Head queries compared with heads, every kernel layout (per positive, per-negative sides, chunk-shared,
    all pairs) and the numpy scorer of read_embeddings all reproduce f(h, r, t)."""
    torch.manual_seed(0)
    s = make_scorer(name, 4, 6.0, 2.0)
    rows = torch.randn(12, 8)
    h_i, t_i = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    rel = torch.randn(4, s.relation_width)
    f = s.score(rows[h_i], rel, rows[t_i])
    form = s.relation_form(rel)
    head_q = s.query(rows[t_i], form, torch.ones(4, dtype=torch.bool))
    assert torch.allclose(s.bias + s.similarity(head_q, rows[h_i]), f, atol=1e-5)
    for compile in (False, True):
        k = s.kernels(compile)
        tail_q = s.query(rows[h_i], form)
        assert torch.allclose(s.bias + k.gathered(tail_q, rows, t_i[:, None]), f[:, None], atol=1e-5)
        sides = torch.tensor([[False, True]] * 4)
        both = k.two_sided(tail_q, head_q, rows, torch.stack([t_i, h_i], 1), sides)
        assert torch.allclose(s.bias + both, torch.stack([f, f], 1), atol=1e-5)
        shared = k.chunk_shared(tail_q, rows, torch.arange(12).view(2, 6), 2)
        assert torch.allclose(shared[0], s.similarity(tail_q[0:1], rows[:6]), atol=1e-5)
        assert torch.allclose(s.bias + k.all_pairs(tail_q, rows)[torch.arange(4), t_i], f, atol=1e-4)
    numpy = s.numpy_score(rows[h_i].numpy(), rel.numpy(), rows[t_i].numpy())
    assert np.allclose(numpy, f.numpy(), atol=1e-4)


@pytest.mark.parametrize("name", BUILT_IN)
def test_generic_kernels_have_the_same_gradients_as_the_function(name):
    torch.manual_seed(1)
    s = make_scorer(name, 3, 6.0, 2.0)
    rows = torch.randn(9, 6, requires_grad=True)
    q = torch.randn(4, 6, requires_grad=True)
    index = torch.randint(0, 9, (4, 5))
    weights = torch.randn(4, 5)
    (s.kernels(False).gathered(q, rows, index) * weights).sum().backward()
    got = q.grad.clone(), rows.grad.clone()
    q.grad = rows.grad = None
    (s.similarity(q.unsqueeze(1), rows[index]) * weights).sum().backward()
    assert torch.allclose(got[0], q.grad, atol=1e-5) and torch.allclose(got[1], rows.grad, atol=1e-5)


def test_reciprocal_relations_answer_head_queries_with_the_inverse_row():
    s = make_scorer("distmult", 2, 6.0, 2.0)
    queries = Queries(s, num_relations=3, reciprocal=True)
    assert queries.table_rows == 6 and queries.relation_ids(torch.tensor([0, 2])).tolist() == [0, 2, 3, 5]
    table = torch.arange(24, dtype=torch.float32).view(6, 4)
    anchor = torch.ones(2, 4)
    head = queries.evaluation_query(anchor, torch.tensor([0, 2]), table, head=True)
    assert torch.equal(head, table[[3, 5]])                         # anchor ⊙ inverse rows (anchor is 1)
    tail_form, head_form = queries.forms(table[queries.relation_ids(torch.tensor([0, 2]))])
    mixed = queries.query(anchor, tail_form, head_form, torch.tensor([False, True]))
    assert torch.equal(mixed, torch.stack([table[0], table[5]]))


def test_regularizers_hand_computed():
    h = torch.tensor([[3.0, 0.0, 4.0, 1.0]])          # complex coordinates (3 + 4i, 0 + i): moduli 5, 1
    r = torch.tensor([[1.0, -1.0, 0.0, 0.0]])          # moduli 1, 1
    t = torch.tensor([[0.0, 0.0, 0.0, 2.0]])           # moduli 0, 2
    assert regularization("n3", [h, r, t], True).item() == pytest.approx(125 + 1 + 1 + 1 + 0 + 8)
    assert regularization("n3", [h, r, t], False).item() == pytest.approx(27 + 64 + 1 + 1 + 1 + 8)
    assert regularization("l2", [h, r, t], False).item() == pytest.approx(9 + 16 + 1 + 1 + 1 + 4)
    assert regularization("none", [h, r, t], True).item() == 0.0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_one_vs_all_loss_is_cross_entropy_from_its_parts(smoothing):
    torch.manual_seed(2)
    scores, answers = torch.randn(5, 7), torch.tensor([0, 3, 6, 2, 2])
    target = scores[torch.arange(5), answers]
    ours = one_vs_all_loss(target, torch.logsumexp(scores, 1), scores.mean(1), smoothing)
    assert ours.item() == pytest.approx(F.cross_entropy(scores, answers, label_smoothing=smoothing).item(), abs=1e-6)


SMALL = pairs(MINI, "--data.synthetic.num_entities=200", "--data.synthetic.num_triples=1600",
              "--train.batch_size=64", "--train.num_negatives=8", "--train.max_steps=1", "--mat.mu=0.5")



@pytest.mark.parametrize("detach", [False, True])
def test_discriminator_adversarial_term_reaches_structure_through_the_generators(detach):
    """The reference (AdvMixTrainer) scores G(s) in D's step without detaching it: D's adversarial term sends
    gradient through the generators into the structural rows, while the generators' weights are stepped only by
    their own update. Compared with the reference formula computed directly on the same tensors."""
    cfg = load_config(None, SMALL + [("mat.detach_fakes", str(detach).lower())])
    trainer = local_trainer(cfg, generate(cfg.data.synthetic), None, show_progress=False)
    step = trainer.step_fn
    structural = torch.randn(6, 16, requires_grad=True)
    torch.manual_seed(3)
    ours = step._generate_in_discriminator(structural)
    torch.manual_seed(3)
    reference = trainer.runtime.generators(structural)               # the reference: G(s), not detached
    for m in ours:
        assert torch.allclose(ours[m], reference[m])
    loss = sum(f.square().sum() for f in ours.values())
    if detach:
        assert not loss.requires_grad
        return
    loss.backward()
    expected = torch.autograd.grad(sum(f.square().sum() for f in reference.values()), structural)[0]
    assert torch.allclose(structural.grad, expected, atol=1e-6)
    assert all(p.grad is None for p in trainer.runtime.generators.parameters())   # not G's weights


@register_scorer("test_transe_l2")
class EuclideanTranslation(Scorer):
    """A scoring function the package does not ship, defined in this file only: f = −‖h + r − t‖₂."""

    def query(self, anchor, relation, head_mode=None):
        if head_mode is None:
            return anchor + relation
        return anchor + torch.where(head_mode.unsqueeze(-1), -relation, relation)      # t − r, compared with h

    def similarity(self, query, candidates):
        return -(query - candidates).square().sum(-1).clamp_min(1e-30).sqrt()


def test_a_scorer_defined_outside_the_package_trains_evaluates_and_predicts(tmp_path):
    from mmkgc_dist.serving.predict import load_run
    cfg = load_config(None, [p for p in SMALL if p[0] != "train.max_steps"] +
                      [("model.scoring", "test_transe_l2"), ("train.epochs", "2"),
                       ("run.out_dir", str(tmp_path)), ("model.modalities", "[]"), ("mat.enabled", "false")])
    trainer = local_trainer(cfg, generate(cfg.data.synthetic), str(tmp_path / "run"), show_progress=False)
    trainer.fit()
    trainer.save()
    metrics = trainer.evaluate("test")
    assert 0 < metrics["mrr"] <= 1
    model = load_run(str(tmp_path / "run"))
    assert type(model.scoring.scorer) is EuclideanTranslation
    tail = model.predict(head=model.entities.names[0], relation=model.relations.names[0], k=3)
    head = model.predict(tail=model.entities.names[0], relation=model.relations.names[0], k=3)
    assert len(tail) == len(head) == 3
    # the predicted top tail's score is the function's own value on the rows
    h, r, t = 0, 0, tail[0].id
    direct = model.scoring.scorer.score(model.joint[[h]], model.relation_rows[[r]], model.joint[[t]]).item()
    assert tail[0].score == pytest.approx(direct, abs=1e-4)
    assert model.score([(h, r, t)])[0] == pytest.approx(direct, abs=1e-4)
    h = head[0].id
    direct = -(model.joint[h] + model.relation_rows[0] - model.joint[0]).norm().item()
    assert head[0].score == pytest.approx(direct, abs=1e-4)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_scorer_learns_with_the_winning_regime(name):
    """Reciprocal relations, N3 and 1-vs-all train every scorer (loss falls, the model ranks far above chance)."""
    cfg = load_config(None, [p for p in SMALL if p[0] not in ("train.max_steps", "mat.mu")] +
                      [("model.scoring", name), ("model.reciprocal", "true"), ("model.regularizer", "n3"),
                       ("model.regularizer_weight", "0.001"), ("train.negatives", "all"), ("train.epochs", "4"),
                       ("train.lr", "0.01"), ("train.log_every", "1")])
    trainer = local_trainer(cfg, generate(cfg.data.synthetic), None, show_progress=False)
    losses = []
    for batch, negatives in trainer.batches():
        losses.append(float(trainer.step_fn(batch, negatives)["loss"]))
        if len(losses) == 60:
            break
    assert all(math.isfinite(v) for v in losses) and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert trainer.evaluate("test")["mrr"] > 5 / 200                   # chance is ~ (ln 200) / 200


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_scorer_from_the_command_line(tmp_path, name):
    """Each scoring function trains (structure-only and AdaMF-MAT), evaluates, predicts and exports from the
    command line on the default graph (shrunk), and numpy on the export reproduces the model's scores."""
    import json

    from mmkgc_dist import load_run, read_embeddings
    from support import TINY, cli
    for modal in (["--model.modalities=[]", "--mat.enabled=false"], []):
        run = tmp_path / f"run{len(modal)}"
        res = cli("train", *TINY, f"--model.scoring={name}", *modal, "--run-dir", run, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "MRR" in res.stdout
    res = cli("evaluate", run, "--split", "valid", cwd=tmp_path)
    assert res.returncode == 0 and "MRR" in res.stdout, res.stderr[-3000:]
    model = load_run(str(run))
    entity, relation = model.entities.names[0], model.relations.names[0]
    res = cli("predict", run, "--head", entity, "--relation", relation, "--top", "3", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = json.loads(res.stdout[res.stdout.index("{"):])["predictions"]
    ours = model.predict(head=entity, relation=relation, k=3)
    assert [p["id"] for p in printed] == [p.id for p in ours]
    res = cli("export", run, tmp_path / "export", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    emb = read_embeddings(str(tmp_path / "export"))
    assert emb.info["scoring"]["name"] == name
    triples = model.model.evaluator.known_triples()[:50]
    outside = emb.score(triples[:, 0], triples[:, 1], triples[:, 2])
    assert np.allclose(outside, model.score(triples.tolist()), atol=1e-4)


@pytest.mark.parametrize("name, pairs", [("ikrl", 9), ("tbkgc", 5)])
def test_baselines_score_views_of_the_entity(name, pairs):
    """IKRL and TBKGC as scorers over view fusion: the joint row holds normalised views, every kernel layout
    and the numpy reader reproduce f, and f is γ minus the sum of the baseline's TransE energies."""
    from mmkgc_dist.model.kgc import EntityRows, MultiModalKGC
    torch.manual_seed(4)
    s = make_scorer(name, 4, 6.0, 2.0).for_modalities(2)
    assert len(s.pairs) == pairs
    model = MultiModalKGC(8, {"visual": 5, "text": 3}, s.fusion)
    masks = {"visual": torch.tensor([True] * 9 + [False] * 3), "text": torch.ones(12, dtype=torch.bool)}
    rows = EntityRows(torch.randn(12, 8), {"visual": torch.randn(12, 5), "text": torch.randn(12, 3)}, masks)
    joint, weights = model.embed(rows)
    assert weights is None and joint.shape == (12, 8 * (3 if name == "ikrl" else 3))
    h_i, t_i, rel = torch.tensor([0, 1, 10]), torch.tensor([4, 11, 2]), torch.randn(3, 8)
    f = s.score(joint[h_i], rel, joint[t_i])
    views = lambda x: x.view(len(x), -1, 8)
    r = F.normalize(rel, dim=-1)
    energies = sum((views(joint[h_i])[:, a] + r - views(joint[t_i])[:, b]).abs().sum(-1) for a, b in s.pairs)
    assert torch.allclose(f, 6.0 - energies, atol=1e-5)
    k, form = s.kernels(False), s.relation_form(rel)
    head_q = s.query(joint[t_i], form, torch.ones(3, dtype=torch.bool))
    assert torch.allclose(s.bias + s.similarity(head_q, joint[h_i]), f, atol=1e-5)
    assert torch.allclose(s.bias + k.all_pairs(s.query(joint[h_i], form), joint)[torch.arange(3), t_i], f, atol=1e-4)
    both = k.two_sided(s.query(joint[h_i], form), head_q, joint, torch.stack([t_i, h_i], 1),
                       torch.tensor([[False, True]] * 3))
    assert torch.allclose(s.bias + both, torch.stack([f, f], 1), atol=1e-5)
    assert np.allclose(s.numpy_score(joint[h_i].detach().numpy(), rel.numpy(), joint[t_i].detach().numpy()),
                       f.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ["ikrl", "tbkgc"])
def test_baselines_train_evaluate_and_export_in_the_harness(tmp_path, name):
    from mmkgc_dist import load_run, read_embeddings
    cfg = load_config(None, [p for p in SMALL if p[0] not in ("train.max_steps", "mat.mu")] +
                      [("model.scoring", name), ("mat.enabled", "false"), ("train.epochs", "2")])
    trainer = local_trainer(cfg, generate(cfg.data.synthetic), str(tmp_path / "run"), show_progress=False)
    trainer.fit()
    trainer.save()
    assert 0 < trainer.evaluate("test")["mrr"] <= 1
    model = load_run(str(tmp_path / "run"))
    model.model.export(str(tmp_path / "export"))
    emb = read_embeddings(str(tmp_path / "export"))
    triples = model.model.evaluator.known_triples()[:20]
    assert np.allclose(emb.score(triples[:, 0], triples[:, 1], triples[:, 2]), model.score(triples.tolist()),
                       atol=1e-4)
    with pytest.raises(Exception, match="MAT fuses generated modalities with AdaMF"):
        local_trainer(load_config(None, SMALL + [("model.scoring", name)]), generate(cfg.data.synthetic), None,
                      show_progress=False)
