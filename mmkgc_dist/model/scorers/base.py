"""The scorer seam: what a scoring function is to the rest of the package, and the registry of them by name.

Every scoring function here is written in *query form*: a (head, relation) or (relation, tail) query becomes one
vector q of the entity width, and f = bias + similarity(q, candidate). So one set of kernels serves training
(per-positive, per-negative sides, chunk-shared candidates), the ranking engine (exact and sampled, at any
world size) and predict, and both corruption sides and mixed batches take the same path. A scorer says:

- its relation rows' width and how its tables are initialised (uniform bounds),
- ``relation_form``: relation rows → what queries are built from (RotatE: phases),
- ``query``: anchor rows and relations → queries (``head_mode`` True: the anchor is the tail),
- ``similarity``: queries against candidate rows, broadcasting (higher is more plausible),
- ``numpy_score`` for ``read_embeddings`` and ``describe`` for export.json.

Adding one is one file: subclass ``Scorer``, decorate it with ``@register_scorer("name")``, import the file before
the config is read (``model.scoring: name``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

SCORERS: dict[str, type["Scorer"]] = {}


def register_scorer(name: str) -> Callable[[type], type]:
    """Class decorator: ``model.scoring: name`` builds this scorer."""
    def add(cls: type) -> type:
        if name in SCORERS and SCORERS[name] is not cls:
            raise ValueError(f"a scorer named {name!r} is registered already ({SCORERS[name].__qualname__})")
        cls.name = name
        SCORERS[name] = cls
        return cls
    return add


PLUGIN_GROUP = "mmkgc_dist.scorers"      # entry points of installed distributions: name = module:ScorerClass


def plugin_scorers() -> dict:
    """Scorers other distributions declare under the ``mmkgc_dist.scorers`` entry-point group, by name (not
    loaded: a plugin's module is imported only when its name is asked for)."""
    from importlib.metadata import entry_points
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def scorer_class(name: str) -> type["Scorer"]:
    """The scorer registered as ``name``: built in, registered in this process, or an installed plugin's.
    LookupError names what is known (the callers turn it into a ConfigError)."""
    if name in SCORERS:
        return SCORERS[name]
    plugins = plugin_scorers()
    if name not in plugins:
        known = sorted(set(SCORERS) | set(plugins))
        raise LookupError(f"model.scoring: unknown scoring function {name!r}; registered: {', '.join(known)} "
                          f"(plugins declare the entry-point group {PLUGIN_GROUP!r})")
    entry = plugins[name]
    try:
        cls = entry.load()
    except Exception as exc:        # noqa: BLE001 — a plugin's import can fail in any way
        raise LookupError(f"model.scoring={name!r}: the plugin {entry.value} (distribution "
                          f"{getattr(entry.dist, 'name', '?')}) failed to load: {type(exc).__name__}: {exc}")
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise LookupError(f"model.scoring={name!r}: the plugin {entry.value} is not a Scorer subclass")
    return register_scorer(name)(cls) if SCORERS.get(name) is not cls else cls


def make_scorer(name: str, dim: int, gamma: float, epsilon: float) -> "Scorer":
    return scorer_class(name)(dim, gamma, epsilon)


class Scorer:
    """Base of the scoring functions. Entities are rows of width 2·dim (complex scorers read them as
    [re_1..re_d, im_1..im_d]); ``bias`` is added to every similarity (a distance scorer's margin γ)."""

    name = ""
    complex_rows = False            # rows are complex numbers (N3 takes their modulus)
    fusion = "adamf"                # the fusion whose joint rows it scores (model/kgc.py builds it)
    neighbour_metric = "euclidean"  # how neighbours() measures entity rows: euclidean or complex_l1
    answer_search = None            # the FAISS index of approximate answers (answer_index.py): l2, inner_product

    def __init__(self, dim: int, gamma: float, epsilon: float = 2.0):
        self.dim, self.gamma, self.epsilon = dim, gamma, epsilon
        self.width = 2 * dim

    # ---- tables
    @property
    def relation_width(self) -> int:
        return self.width

    @property
    def entity_init_bound(self) -> float:
        return (6.0 / (2 * self.width)) ** 0.5         # Glorot's bound of a width x width matrix

    @property
    def relation_init_bound(self) -> float:
        return self.entity_init_bound

    bias = 0.0

    # ---- the function
    def relation_form(self, rows: Tensor) -> Tensor:
        return rows

    def query(self, anchor: Tensor, relation: Tensor, head_mode: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def similarity(self, query: Tensor, candidates: Tensor) -> Tensor:
        """Broadcasting over leading dimensions: [..., W] with [..., W] → [...]."""
        raise NotImplementedError

    def score(self, head: Tensor, relation_rows: Tensor, tail: Tensor) -> Tensor:
        """f(h, r, t) on rows (the tail-query form)."""
        return self.bias + self.similarity(self.query(head, self.relation_form(relation_rows)), tail)

    def kernels(self, compile: bool = False) -> "ScoreKernels":
        return ScoreKernels(self, compile)

    def for_modalities(self, count: int) -> "Scorer":
        """Fit the scorer to the number of fused modalities (the view scorers' pairs); itself by default."""
        return self

    # ---- outside the package
    def describe(self) -> dict:
        """export.json's "scoring" record: the function and its constants."""
        return {"name": self.name, "model": f"{type(self).__name__} over the joint (fused) entity embeddings",
                "dim": self.dim, "gamma": self.gamma, "epsilon": self.epsilon, "bias": self.bias}

    def relation_columns(self, rows: Tensor) -> dict[str, Tensor]:
        """Extra relation columns of an export (RotatE: the phases)."""
        return {}

    def numpy_score(self, head: np.ndarray, relation_rows: np.ndarray, tail: np.ndarray) -> np.ndarray:
        """f on exported arrays. This default runs the torch function; the built-in scorers write it in numpy."""
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        with torch.no_grad():
            return self.score(as_tensor(head), as_tensor(relation_rows), as_tensor(tail)).numpy()


def _gathered(scorer: Scorer, query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
    return scorer.similarity(query.unsqueeze(1), rows[index])


def _two_sided(scorer: Scorer, tail_query: Tensor, head_query: Tensor, rows: Tensor, index: Tensor,
               head: Tensor) -> Tensor:
    query = torch.where(head.unsqueeze(-1), head_query.unsqueeze(1), tail_query.unsqueeze(1))
    return scorer.similarity(query, rows[index])


def _chunk_shared(scorer: Scorer, query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
    chunks, k = index.shape
    return scorer.similarity(query.view(chunks, -1, 1, query.shape[-1]), rows[index].unsqueeze(1)).view(-1, k)


class ScoreKernels:
    """Similarities of many candidates per query — the same four layouts for every scorer, written once from
    ``scorer.similarity`` (autograd derives the backward; ``compile`` fuses each with torch.compile). RotatE
    overrides them with its hand-written distance kernels; dot-product scorers override ``all_pairs`` with a
    matrix product."""

    def __init__(self, scorer: Scorer, compile: bool = False):
        self.scorer, self.compiled = scorer, compile
        wrap = (lambda f: torch.compile(f, dynamic=None)) if compile else (lambda f: f)
        self._gathered, self._two_sided, self._shared = (wrap(f) for f in (_gathered, _two_sided, _chunk_shared))

    def _dyn(self, *tensors: Tensor) -> None:
        if self.compiled:
            for t in tensors:
                torch._dynamo.maybe_mark_dynamic(t, 0)

    def pairs(self, query: Tensor, target: Tensor) -> Tensor:
        """[B]: each query against its own target row."""
        return self.scorer.similarity(query, target)

    def gathered(self, query: Tensor, rows: Tensor, index: Tensor) -> Tensor:
        """[B, K]: query b against rows[index[b, k]]."""
        self._dyn(query, rows, index)
        return self._gathered(self.scorer, query, rows, index)

    def two_sided(self, tail_query: Tensor, head_query: Tensor, rows: Tensor, index: Tensor, head: Tensor) -> Tensor:
        """[B, K]: each negative against its side's query (``head`` bool [B, K])."""
        self._dyn(tail_query, head_query, rows, index, head)
        return self._two_sided(self.scorer, tail_query, head_query, rows, index, head)

    def chunk_shared(self, query: Tensor, rows: Tensor, index: Tensor, chunk: int) -> Tensor:
        """index [ceil(B / chunk), K] shared by ``chunk`` consecutive queries; a trailing partial chunk uses the
        last row."""
        full = (query.shape[0] // chunk) * chunk
        parts = []
        if full:
            self._dyn(query, rows, index)
            parts.append(self._shared(self.scorer, query[:full], rows, index[:full // chunk]))
        if full < query.shape[0]:
            parts.append(self.gathered(query[full:], rows, index[-1:].expand(query.shape[0] - full, -1)))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def all_pairs(self, query: Tensor, candidates: Tensor, chunk: int = 1024) -> Tensor:
        """[B, N]: every query against every candidate (candidates in chunks: no [B, N, W] block)."""
        parts = [self.scorer.similarity(query.unsqueeze(1), candidates[i:i + chunk].unsqueeze(0))
                 for i in range(0, candidates.shape[0], chunk)]
        return torch.cat(parts, dim=1) if parts else query.new_zeros(query.shape[0], 0)
