"""Model math against hand-computed values (plain tensors, no tables, no distribution)."""
import ast
import math
import os

import pytest
import torch

from mmkgc_dist.model import (AdaMFFusion, DistanceKernels, MATGenerators, RotatE, batch_adversarial_loss,
                              complex_l1_distance, masked_attention, pairwise_sigmoid_loss, self_adversarial_loss)


def test_rotate_score_hand_computed():
    rot = RotatE(dim=2, gamma=12.0, epsilon=2.0)           # embedding_range = 7
    h = torch.tensor([1.0, 0.0, 0.0, 2.0])                 # h = (1 + 0i, 0 + 2i)
    t = torch.tensor([0.0, 1.0, 1.0, 0.0])                 # t = (0 + 1i, 1 + 0i)
    # phase θ = r / (7/π): choose r so θ = (π/2, π)
    r = torch.tensor([3.5, 7.0])
    # h∘e^{iθ} = (1·i, 2i·(−1)) = (0 + 1i, 0 − 2i);  minus t → (0 + 0i, −1 − 2i): moduli 0 and √5
    expected = 12.0 - math.sqrt(5.0)
    assert torch.allclose(rot.score(h, r, t), torch.tensor(expected), atol=1e-5)


def test_head_query_is_conjugate_rotation():
    torch.manual_seed(0)
    rot = RotatE(dim=8, gamma=6.0)
    h, t, r = torch.randn(5, 16), torch.randn(5, 16), torch.randn(5, 8)
    phase = rot.phase(r)
    tail_form = complex_l1_distance(rot.query(h, phase), t)
    head_form = complex_l1_distance(rot.query(t, phase, torch.ones(5, dtype=torch.bool)), h)
    assert torch.allclose(tail_form, head_form, atol=1e-5)


def test_masked_attention_hand_computed():
    w = torch.tensor([1.0, 0.0])
    x = torch.tensor([[[0.0, 5.0], [100.0, 0.0], [-100.0, 0.0]]])  # tanh → [0, 1, -1] on coordinate 0
    both = masked_attention(x, torch.tensor([[True, True, True]]), w)
    e = math.e
    assert torch.allclose(both, torch.tensor([[1, e, 1 / e]]) / (1 + e + 1 / e), atol=1e-6)
    no_visual = masked_attention(x, torch.tensor([[True, False, True]]), w)
    assert torch.allclose(no_visual, torch.tensor([[1, 0, 1 / e]]) / (1 + 1 / e), atol=1e-6)


def test_fusion_ignores_absent_modality_rows():
    torch.manual_seed(0)
    fusion = AdaMFFusion(4, {"visual": 3})
    s = torch.randn(2, 4)
    garbage = torch.full((2, 3), 1e6)
    joint, weights = fusion(s, {"visual": garbage}, {"visual": torch.tensor([False, False])})
    assert torch.allclose(joint, s) and torch.allclose(weights[:, 1], torch.zeros(2))


def test_a_missing_structure_is_masked_like_a_missing_modality():
    """structure=False (a dropped or new entity): the joint row is the attention-weighted sum of the projected
    modalities alone and no gradient reaches the structural row; structure dropout keeps the structure of an
    entity that has no other modality, and decides by (seed, batch, id) only."""
    from mmkgc_dist.model.dropout import STRUCTURE, StructureDropout
    from mmkgc_dist.model.fusion import masked_attention

    torch.manual_seed(0)
    fusion = AdaMFFusion(4, {"v": 3, "t": 5})
    structural = torch.randn(2, 4, requires_grad=True)
    features = {"v": torch.randn(2, 3), "t": torch.randn(2, 5)}
    masks = {"v": torch.tensor([True, True]), "t": torch.tensor([True, False]),
             STRUCTURE: torch.tensor([False, True])}
    joint, weights = fusion(structural, features, masks)
    projected = fusion.project(features)
    alone = torch.stack([projected["v"][0], projected["t"][0]])
    w = masked_attention(alone.unsqueeze(0), torch.ones(1, 2, dtype=torch.bool), fusion.attention)[0]
    assert torch.allclose(joint[0], w[0] * alone[0] + w[1] * alone[1], atol=1e-6)
    assert weights[0, 0] == 0 and weights[1, 2] == 0
    joint.sum().backward()
    assert not structural.grad[0].any() and structural.grad[1].any()
    dropout = StructureDropout(0.5, seed=3)
    ids, present = torch.arange(1000), {"v": torch.arange(1000) % 10 != 0}
    assert dropout.keep(ids, present) is None                   # no batch key: every structure kept
    dropout.key = (0, 7)
    keep = dropout.keep(ids, present)
    assert keep[~present["v"]].all() and 0.4 < 1 - keep[present["v"]].float().mean() < 0.6
    assert torch.equal(keep[500:], dropout.keep(ids[500:], {"v": present["v"][500:]}))   # by id alone
    dropout.key = (0, 8)
    assert not torch.equal(dropout.keep(ids, present), keep)


def test_self_adversarial_loss_hand_computed():
    pos = torch.tensor([2.0])
    neg = torch.tensor([[0.0, 1.0]])
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))
    w0, w1 = 1 / (1 + math.exp(2.0)), math.exp(2.0) / (1 + math.exp(2.0))  # softmax(2·[0, 1])
    expected = -0.5 * (ls(2.0) + w0 * ls(0.0) + w1 * ls(-1.0))
    assert abs(self_adversarial_loss(pos, neg, 2.0).item() - expected) < 1e-6
    # The adversarial weights are constants: the gradient flows only through log σ(−f⁻).
    neg = neg.clone().requires_grad_()
    self_adversarial_loss(pos, neg, 2.0).backward()
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert torch.allclose(neg.grad, torch.tensor([[0.5 * w0 * sig(0.0), 0.5 * w1 * sig(1.0)]]), atol=1e-6)


def test_pairwise_loss_direction():
    good, bad = torch.tensor([5.0]), torch.tensor([-5.0])
    assert pairwise_sigmoid_loss(good, bad) < pairwise_sigmoid_loss(bad, good)


def test_reference_adversarial_loss_hand_computed():
    """The released code's SigmoidLoss on one fake score per positive: softmax over the batch of fakes."""
    pos, fake = torch.tensor([2.0, 1.0, 3.0]), torch.tensor([0.5, -1.0, 2.0])
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))
    e = [math.exp(2.0 * f) for f in (0.5, -1.0, 2.0)]                      # temperature α = 2
    w = [x / sum(e) for x in e]
    expected = -0.5 * ((ls(2.0) + ls(1.0) + ls(3.0)) / 3 + sum(wi * ls(-f) for wi, f in zip(w, (0.5, -1.0, 2.0))))
    weights = torch.softmax(2.0 * fake, dim=0)
    assert abs(batch_adversarial_loss(pos, fake, weights).item() - expected) < 1e-6
    # the most plausible fake weighs most, so the term exceeds the plain-mean form here
    assert batch_adversarial_loss(pos, fake, weights) > pairwise_sigmoid_loss(pos, fake)


def test_fakes_fill_missing_modalities():
    """An entity without any modality: its fake differs from it when fakes fill missing modalities, and equals it
    under the real entity's masks (what made MAT inert where modalities are missing)."""
    from mmkgc_dist.model.kgc import MultiModalKGC
    torch.manual_seed(0)
    model = MultiModalKGC(8, {"visual": 5, "text": 3})
    structural = torch.randn(2, 8)
    masks = {"visual": torch.tensor([False, True]), "text": torch.tensor([False, True])}
    fakes = {"visual": torch.randn(2, 8), "text": torch.randn(2, 8)}
    real = model.embed_fake(structural, masks, {m: torch.zeros(2, 8) for m in fakes}, fill_missing=False)
    assert torch.allclose(real[0], structural[0])                          # entity 0 fuses its structure only
    same = model.embed_fake(structural, masks, fakes, fill_missing=False)
    filled = model.embed_fake(structural, masks, fakes, fill_missing=True)
    assert torch.allclose(same[0], structural[0]) and not torch.allclose(filled[0], structural[0], atol=1e-3)
    assert torch.allclose(same[1], filled[1])                              # an entity with both: no change


def test_entities_holding_only_marked_structural_rows_select_the_right_ones():
    """The owners' exchange ships structural rows only for the marked (positive) entities; selecting a subset of
    them must return the same rows as selecting from a full table."""
    from mmkgc_dist.model.kgc import EmbeddedEntities
    torch.manual_seed(0)
    joint, structural = torch.randn(7, 4), torch.randn(7, 4)
    marked = torch.tensor([False, True, True, False, True, False, True])
    masks = {"text": torch.ones(7, dtype=torch.bool)}
    full = EmbeddedEntities(joint, structural, masks)
    partial = EmbeddedEntities(joint, structural[marked], masks, structural_of=marked)
    for index in (torch.tensor([1, 2, 4, 6]), torch.tensor([6, 1]), torch.tensor([4, 4, 2])):
        a, b = full.select(index), partial.select(index)
        assert torch.equal(a.structural, b.structural) and torch.equal(a.joint, b.joint)


def test_generators_shapes():
    gens = MATGenerators(["visual", "text"], width=8, noise_dim=4, hidden=16)
    out = gens(torch.randn(3, 8))
    assert set(out) == {"visual", "text"} and out["text"].shape == (3, 8)


@pytest.mark.slow
def test_kernels_match_reference_and_compiled():
    torch.manual_seed(0)
    q, rows = torch.randn(6, 10, dtype=torch.float64), torch.randn(9, 10, dtype=torch.float64)
    idx = torch.randint(0, 9, (6, 4))
    ref = complex_l1_distance(q.unsqueeze(1), rows[idx])
    for kernels in (DistanceKernels(compile=False), DistanceKernels(compile=True)):
        assert torch.allclose(kernels.gathered(q, rows, idx), ref)
        shared = torch.randint(0, 9, (2, 4))              # chunks of 3 positives
        expect = complex_l1_distance(q.view(2, 3, 1, 10), rows[shared].unsqueeze(1)).view(6, 4)
        assert torch.allclose(kernels.chunk_shared(q, rows, shared, 3), expect)
        partial = torch.randint(0, 9, (2, 4))             # 6 positives in chunks of 4: last chunk has 2
        got = kernels.chunk_shared(q, rows, partial, 4)
        expect = torch.cat([complex_l1_distance(q[:4, None], rows[partial[0]][None]),
                            complex_l1_distance(q[4:, None], rows[partial[1]][None])])
        assert torch.allclose(got, expect)
        assert torch.allclose(kernels.all_pairs(q, rows), complex_l1_distance(q[:, None], rows[None]))


def test_model_math_has_no_distribution_imports():
    root = os.path.join(os.path.dirname(__file__), "..", "mmkgc_dist", "model")
    banned = ("torch.distributed", "torchrec", "deepspeed")
    for name in os.listdir(root):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(root, name)).read())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for mod in mods:
                assert not mod.startswith(banned), f"{name} imports {mod}"


@pytest.mark.slow
def test_gathered_distance_gradients_match_autograd():
    torch.manual_seed(0)
    q = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 7, (5, 6))
    weights = torch.randn(5, 6, dtype=torch.float64)
    (complex_l1_distance(q.unsqueeze(1), rows[idx]) * weights).sum().backward()
    expect = q.grad.clone(), rows.grad.clone()
    for compile in (False, True):
        q.grad = rows.grad = None
        (DistanceKernels(compile=compile).gathered(q, rows, idx) * weights).sum().backward()
        assert torch.allclose(q.grad, expect[0]) and torch.allclose(rows.grad, expect[1])


@pytest.mark.slow
def test_two_sided_distance_values_and_gradients():
    """Per-negative corruption sides: each negative scored against h∘r (tail corrupted) or t∘r̄ (head corrupted);
    values and gradients (queries and rows) equal plain autograd, eager and compiled."""
    torch.manual_seed(1)
    qt = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    qh = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 7, (5, 6))
    head = torch.rand(5, 6) < 0.4
    weights = torch.randn(5, 6, dtype=torch.float64)
    reference = torch.where(head, complex_l1_distance(qh.unsqueeze(1), rows[idx]),
                            complex_l1_distance(qt.unsqueeze(1), rows[idx]))
    (reference * weights).sum().backward()
    expect = qt.grad.clone(), qh.grad.clone(), rows.grad.clone()
    for compile in (False, True):
        qt.grad = qh.grad = rows.grad = None
        dist = DistanceKernels(compile=compile).two_sided(qt, qh, rows, idx, head)
        assert torch.allclose(dist, reference)
        (dist * weights).sum().backward()
        assert all(torch.allclose(a, b) for a, b in zip((qt.grad, qh.grad, rows.grad), expect))


def test_lazy_adam_is_torch_adam_when_every_row_has_a_gradient_and_skips_rows_without():
    from mmkgc_dist.model.optim import LazyAdam
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 4))
    b = torch.nn.Parameter(a.detach().clone())
    lazy, reference = LazyAdam([a], lr=0.01), torch.optim.Adam([b], lr=0.01)
    for _ in range(5):
        g = torch.randn(6, 4)
        a.grad, b.grad = g.clone(), g.clone()
        lazy.step()
        reference.step()
    assert torch.allclose(a, b, atol=1e-6)
    frozen_row = a.detach()[2].clone()
    g = torch.randn(6, 4)
    g[2] = 0
    a.grad = g
    lazy.step()
    assert torch.equal(a.detach()[2], frozen_row)                       # no gradient: no move, no decay
    assert not torch.equal(a.detach()[0], b.detach()[0])


def test_table_optimizers_take_sparse_gradients_of_the_looked_up_rows():
    """Single-process tables hand their optimizer sparse gradients (the looked-up rows); the update must be the
    one of the same table with a dense gradient, rows looked up twice summed, rows not looked up left alone."""
    from mmkgc_dist.model.optim import LazyAdam, RowwiseAdagrad
    torch.manual_seed(0)
    init = torch.randn(10, 4)
    for rule in (lambda p: LazyAdam(p, lr=0.01), lambda p: RowwiseAdagrad(p, lr=0.05)):
        sparse = torch.nn.Embedding.from_pretrained(init.clone(), freeze=False, sparse=True)
        dense = torch.nn.Embedding.from_pretrained(init.clone(), freeze=False)
        opts = [rule(list(sparse.parameters())), rule(list(dense.parameters()))]
        for ids in (torch.tensor([1, 2, 5, 7]), torch.tensor([3, 1, 3, 8, 1])):   # sorted unique, then repeats
            target = torch.randn(len(ids), 4)
            for table, opt in zip((sparse, dense), opts):
                opt.zero_grad()
                ((table(ids) - target) ** 2).sum().backward()
                opt.step()
        assert sparse.weight.grad.is_sparse
        torch.testing.assert_close(sparse.weight, dense.weight, rtol=1e-6, atol=1e-7)
        untouched = [0, 4, 6, 9]
        assert torch.equal(sparse.weight.detach()[untouched], init[untouched])


def test_adam_rows_whole_table_run_and_gathered_paths_agree():
    """The whole-table shortcut (every row has a gradient), the runs and the gather/scatter path run the same
    kernel per element: a shard that misses a row and one that does not agree up to the last bit (the fused
    kernel's vector body and tail may round a multiply-add differently depending on where a block starts)."""
    from mmkgc_dist.model.optim import adam_rows_
    torch.manual_seed(1)
    weight, m, v = torch.randn(8, 6), torch.randn(8, 6), torch.rand(8, 6)
    grad = torch.randn(8, 6)
    whole = [t.clone() for t in (weight, m, v)]
    adam_rows_(*whole, torch.arange(8), grad, 3, 0.01)
    rows, rest = torch.tensor([0, 2, 3, 7]), torch.tensor([1, 4, 5, 6])
    for max_runs in (64, 0):                            # run by run in place, then gathered and scattered
        parts = [t.clone() for t in (weight, m, v)]
        adam_rows_(*parts, rows, grad[rows], 3, 0.01, max_runs=max_runs)
        adam_rows_(*parts, rest, grad[rest], 3, 0.01, max_runs=max_runs)
        for a, b in zip(whole, parts):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=f"max_runs={max_runs}")
    view = torch.zeros(8, 8)                            # a padded table: the update goes through a column view
    view[:, :6] = weight
    adam_rows_(view[:, :6], m.clone(), v.clone(), torch.arange(8), grad, 3, 0.01)
    assert torch.equal(view[:, :6], whole[0]) and torch.equal(view[:, 6:], torch.zeros(8, 2))


def test_row_runs_by_hand():
    from mmkgc_dist.model.optim import row_runs
    assert row_runs(torch.tensor([0, 2, 3, 7, 8, 9]), 64) == [(0, 0, 1), (2, 1, 2), (7, 3, 3)]
    assert row_runs(torch.tensor([5]), 64) == [(5, 0, 1)]
    assert row_runs(torch.tensor([], dtype=torch.long), 64) == []
    assert row_runs(torch.tensor([0, 2, 4]), 2) is None                   # 3 runs > 2: gather instead


def test_rowwise_adagrad_by_hand():
    from mmkgc_dist.model.optim import RowwiseAdagrad
    p = torch.nn.Parameter(torch.zeros(2, 3))
    opt = RowwiseAdagrad([p], lr=0.5)
    p.grad = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    opt.step()
    acc = 9.0 / 4                                # mean over the width padded to 4 (TorchRec's layout)
    assert torch.allclose(p.detach()[0], -0.5 * torch.tensor([1.0, 2.0, 2.0]) / (acc ** 0.5 + 1e-8))
    assert torch.equal(p.detach()[1], torch.zeros(3))


@pytest.mark.parametrize("imports", ["import torch, mmkgc_dist", "import mmkgc_dist, torch, mmkgc_dist.model"])
def test_importing_the_package_flushes_denormals_on_every_torch_thread(imports):
    """Denormal inputs are read as zero by every OpenMP worker of a GEMM (without it they are ~15x slower and a
    run slows down step after step); checked on values, not on time. The package flushes when imported after
    torch, the model package when the package came first (the data commands never import torch)."""
    import subprocess
    import sys
    code = (f"import numpy as np\n{imports}\nimport torch\n"
            "torch.set_num_threads(2)\n"
            "tiny = torch.from_numpy(np.full((512, 256), 0x007FFFFF, dtype=np.int32).view(np.float32))\n"
            "print(int((tiny @ torch.ones(256, 512)).count_nonzero()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0"


def test_the_data_commands_never_import_torch():
    """`mmkgc-dist prepare` and `config` start in a fraction of a second: nothing on their path imports torch."""
    import subprocess
    import sys
    code = ("import sys\nfrom mmkgc_dist import cli\nimport mmkgc_dist.data.convert, mmkgc_dist.data.features, "
            "mmkgc_dist.data.recipes, mmkgc_dist.data.synthetic, mmkgc_dist.data.format\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
