"""Answers from a trained run, in one process: top-k tails or heads of queries, scores of triples, nearest
neighbours. A checkpoint of any world size loads (one checkpoint format, checkpoint/format.py) into a
``trained.TrainedModel`` — no trainer, no DeepSpeed.

    from mmkgc_dist import load_run
    model = load_run("runs/db15k")
    model.predict(head="Paris", relation="capitalOf", k=10)          # ranked tails
    model.predict(relation="capitalOf", tail="France", k=10)         # ranked heads
    model.score([("Paris", "capitalOf", "France")])
    model.neighbours("Paris", k=10, space="joint")
    model.predict(head={"text": "a river port on the Seine"}, relation="capitalOf", k=10)   # an entity it lacks

Scores are the run's scoring function f(h, r, t) (``model.scoring``: RotatE's γ − Σ_k |h_k e^{iθ_k} − t_k| by
default) on the fused (joint) entity embeddings, the same function training and evaluation use; higher is more
plausible. ``known`` marks (default) or filters answers
that form a triple of the dataset's train/valid/test splits.

Where an entity is asked by name or id, a mapping of its content may stand instead — ``{"text": ...}``,
``{"image": path}``, ``{"features": {modality: vector}}``, ``"name"`` to show — for an entity the graph does not
hold: its rows are made by the dataset's own encoders and fused with its structure missing (serving/content.py);
nothing is known of it, so none of its answers is marked or filtered as known.
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from ..config import parse_overrides
from .known_index import KnownIndex, build_known_index
from ..errors import QueryError
from ..outputs import derived_folder, derived_places
from .export import checked_k
from .content import Content, ContentEncoder, added_contents, fuse_contents, is_content
from .exact_answers import best_answers
from .neighbour_index import exact_nearest
from .trained import TrainedModel, load_trained

KNOWN_POLICIES = ("mark", "filter", "keep")
KNOWN_INDEX = "known-index"          # the run folder's index of a streamed dataset's known triples
NEIGHBOUR_INDEX = "neighbour-index"  # the run folder's FAISS indexes of neighbours(approximate=True)
ANSWER_INDEX = "answer-index"        # the run folder's FAISS index of predict(approximate=True)
log = logging.getLogger("mmkgc_dist")
SPACES = ("joint", "structural")


@dataclass(frozen=True)
class Prediction:
    rank: int
    id: int
    name: str
    score: float
    known: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class Predictions(list):
    """The ranked answers of one query (a list of ``Prediction``) with the query they answer; ``to_frame()``
    gives a pandas DataFrame with one row per answer (rank, id, name, score, known, head, relation, tail — the
    query's names, None at the asked position)."""

    def __init__(self, answers, head=None, relation=None, tail=None):
        super().__init__(answers)
        self.head, self.relation, self.tail = head, relation, tail

    def to_frame(self):
        import pandas as pd
        columns = ["rank", "id", "name", "score", "known", "head", "relation", "tail"]
        query = {"head": self.head, "relation": self.relation, "tail": self.tail}
        return pd.DataFrame([{**p.as_dict(), **query} for p in self], columns=columns)


def checked_options(k, known, where: str) -> tuple[int, str]:
    """``k`` a whole number >= 1 and ``known`` a policy, checked before any work (QueryError naming them)."""
    if not isinstance(known, str) or known not in KNOWN_POLICIES:
        raise QueryError(f"{where}: known={known!r}; expected one of {', '.join(KNOWN_POLICIES)}")
    return checked_k(k, where), known


def short_name(name: str) -> str:
    """What people type for a name: a URI's last segment (``<http://dbpedia.org/resource/Barack_Obama>`` →
    ``barack obama``), URL-decoded, underscores as spaces, case-folded."""
    from urllib.parse import unquote
    tail = str(name).strip().strip("<>").rstrip("/")
    tail = tail.rsplit("/", 1)[-1].rsplit("#", 1)[-1]
    return " ".join(unquote(tail).replace("_", " ").split()).casefold()


class Vocabulary:
    """Names ↔ ids of one kind (entity or relation). A name is found as given, else by its short form
    (``short_name``: ``Barack_Obama`` or ``barack obama`` for a DBpedia URI) when exactly one name has it; an
    ambiguous short form lists the candidates, an unknown name the closest known ones."""

    def __init__(self, kind: str, names: Sequence[str]):
        self.kind, self.names = kind, list(names)
        self.ids = {name: i for i, name in enumerate(self.names)}
        self._short: dict[str, list[int]] | None = None        # built at the first name not found as given

    def id(self, key) -> int:
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not 0 <= int(key) < len(self.names):
                raise QueryError(f"{self.kind} id {key}: out of range [0, {len(self.names)})")
            return int(key)
        if key in self.ids:
            return self.ids[key]
        found = self.by_short().get(short_name(key), []) if isinstance(key, str) and key.strip() else []
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(repr(self.names[i]) for i in found[:8])
            raise QueryError(f"{self.kind} {key!r} is ambiguous: {len(found)} names have that short form "
                             f"({listed}{', ...' if len(found) > 8 else ''}); give the full name")
        close = self.closest(str(key))
        hint = f"; closest known: {', '.join(repr(c) for c in close)}" if close else ""
        raise QueryError(f"unknown {self.kind} {key!r} ({len(self.names)} known{hint})")

    def by_short(self) -> dict[str, list[int]]:
        if self._short is None:
            self._short = {}
            for i, name in enumerate(self.names):
                self._short.setdefault(short_name(name), []).append(i)
        return self._short

    def closest(self, key: str, n: int = 5) -> list[str]:
        """Known names that differ only in case, then names holding ``key``, then the fuzzy-closest by full name
        and by short form (``short_name``) — rapidfuzz, in C++: difflib took 31 s over 10^6 names
        (benchmarks/library_choices.py)."""
        from rapidfuzz import fuzz, process, utils

        lower = key.lower()
        found = [name for name in self.names if name.lower() == lower]
        found += sorted((name for name in self.names if lower in name.lower() and name not in found),
                        key=lambda name: (len(name) - len(key), name))[:n]
        if len(found) < n:
            fuzzy = [(score, name) for name, score, _ in process.extract(
                key, self.names, scorer=fuzz.WRatio, processor=utils.default_process, limit=n, score_cutoff=50)]
            shorts = self.by_short()
            fuzzy += [(score, self.names[i]) for short, score, _ in process.extract(
                short_name(key), list(shorts), scorer=fuzz.WRatio, limit=n, score_cutoff=50) for i in shorts[short]]
            for _, name in sorted(fuzzy, key=lambda pair: -pair[0]):
                if name not in found:
                    found.append(name)
        return found[:n]

    def ids_of(self, keys) -> np.ndarray:
        return np.array([self.id(k) for k in keys], dtype=np.int64)


class Predictor:
    """A trained model held in one process: joint and structural entity embeddings, relation phases."""

    def __init__(self, model: TrainedModel, text_model: str | None = None, image_encoder: str | None = None,
                 image_weights: str | None = None):
        self.model, self.cfg, self.step = model, model.cfg, model.step
        self.scoring = model.scoring
        self.entities = Vocabulary("entity", model.data.entity_names)
        self.relations = Vocabulary("relation", model.data.relation_names)
        chunks = list(model.runtime.embedding_chunks())
        self.structural = torch.cat([s for _, s, _, _ in chunks])
        self.joint = torch.cat([j for _, _, j, _ in chunks])
        self.relation_rows = model.runtime.relation_table()
        self._known: KnownIndex | None = None
        self._neighbour_indexes: dict = {}
        self._answer_index = None
        self.entity_chunk: int | None = None     # entities scored at once by predict (None: ~2^24 scores per chunk)
        stats = model.statistics          # a streamed training split stays on disk (known_index)
        self._stream = (model.cfg.data.path, stats.manifest) if stats.streamed else None
        self._held = [t for t in model.data.splits.values() if len(t)]
        self.batch_size = model.cfg.eval.batch_size
        dataset = model.cfg.data.path if model.cfg.data.source == "parquet" else None
        self.content = ContentEncoder(dataset, {m: model.data.features[m].dim for m in model.modalities},
                                      text_model, image_encoder, image_weights)
        self.held = model.data.num_entities       # the dataset's entities: only they have known triples
        if model.run_dir is not None:
            self._append_added()

    def _append_added(self) -> None:
        """The run's added entities (added.py) after the dataset's: names, joint rows fused from their features
        with the structure missing, zero structural rows."""
        from .added import read_added

        names, features = read_added(self.model.run_dir, self.model.identity)
        if not names:
            return
        self.joint = torch.cat([self.joint, self.embed_content(added_contents(names, features))])
        self.structural = torch.cat([self.structural, self.structural.new_zeros(len(names), self.structural.shape[1])])
        self.entities = Vocabulary("entity", self.entities.names + names)
        log.info("%d entities added to the run (added-entities/): ids %d..%d, placed by their content", len(names),
                 self.held, self.held + len(names) - 1)

    # ------------------------------------------------------------------------------------ entities
    def _anchors(self, anchors: list) -> tuple[np.ndarray, torch.Tensor, list[str]]:
        """(ids, joint rows, names) of entities given by name or id, or by content (a mapping: id −1, rows
        fused from the content with the structure missing)."""
        new = [i for i, a in enumerate(anchors) if is_content(a)]
        if new and not self.model.modalities:
            raise QueryError("new entity: this run is structure-only (it fuses no modality), so it cannot place an "
                             "entity the graph does not hold")
        ids = np.array([-1 if is_content(a) else self.entities.id(a) for a in anchors], dtype=np.int64)
        rows = self.joint[torch.from_numpy(np.maximum(ids, 0))]
        names = [self.entities.names[i] if i >= 0 else "" for i in ids]
        if new:
            contents = [self.content.encode(anchors[i]) for i in new]
            rows = rows.clone()
            rows[torch.tensor(new)] = self.embed_content(contents)
            for i, c in zip(new, contents):
                names[i] = c.name
        return ids, rows, names

    def embed_content(self, contents: list[Content]) -> torch.Tensor:
        """Joint rows of new entities: their modality rows fused with the structure missing."""
        joint, _ = fuse_contents(self.model.runtime, self.structural.shape[1], self.content.dims, contents)
        return joint.to(self.joint.device)

    # ------------------------------------------------------------------------------------ queries
    def predict(self, head=None, relation=None, tail=None, k: int = 10, known: str = "mark",
                approximate: bool = False):
        """Top-``k`` tails of (head, relation, ?), heads of (?, relation, tail) or relations of (head, ?, tail).
        Names or ids; a list of them asks a batch of queries and returns one ``Predictions`` per query.
        ``approximate``: entity answers from a FAISS index re-ranked by the scorer (``answer_index``; its recall
        against the exact path is in ``answer_index().meta``) — for millions of entities."""
        k, known = checked_options(k, known, "predict")
        if not isinstance(approximate, bool):
            raise QueryError(f"predict: approximate={approximate!r}; expected True or False")
        if relation is None and head is not None and tail is not None:
            return self._predict_relations(head, tail, k, known)
        if relation is None or (head is None) == (tail is None):
            raise QueryError("predict: give two of head, relation and tail (the third is predicted)")
        batch = isinstance(head if head is not None else tail, (list, tuple, np.ndarray))
        anchors = head if head is not None else tail
        anchors = list(anchors) if batch else [anchors]
        relations = list(relation) if isinstance(relation, (list, tuple, np.ndarray)) else [relation] * len(anchors)
        if len(relations) != len(anchors):
            raise QueryError(f"predict: {len(anchors)} entities but {len(relations)} relations")
        anchor_ids, anchor_rows, anchor_names = self._anchors(anchors)
        relation_ids = self.relations.ids_of(relations)
        found = self._top(anchor_ids, anchor_rows, relation_ids, "tail" if head is not None else "head",
                          min(k, len(self.entities.names)), known, approximate)
        named = [(a, self.relations.names[r]) for a, r in zip(anchor_names, relation_ids)]
        found = [Predictions(answers, a if head is not None else None, r, a if head is None else None)
                 for answers, (a, r) in zip(found, named)]
        return found if batch else found[0]

    def predict_queries(self, queries, k: int = 10, known: str = "mark",
                        approximate: bool = False) -> list[Predictions]:
        """Answers of many queries (head, relation, tail), each with one of the three asked (None, '' or '?'),
        in the order given (serving/batch.py)."""
        from .batch import predict_queries
        k, known = checked_options(k, known, "predict_queries")
        return predict_queries(self, queries, k, known, approximate=approximate)

    def predict_file(self, src: str, out: str, k: int = 10, known: str = "mark", progress: bool = True,
                     strict: bool = False, approximate: bool = False) -> dict:
        """A query file (TSV/CSV/Parquet: head, relation, tail; one asked per row) answered into ``out``
        (Parquet or JSON lines), in chunks with a progress bar; counts and queries/s (serving/batch.py).
        Queries it cannot answer are listed in ``<out stem>.unknown.jsonl`` (``strict``: refused instead)."""
        from .batch import predict_file
        k, known = checked_options(k, known, "predict_file")
        for name, value in (("src", src), ("out", out)):
            if not isinstance(value, (str, os.PathLike)):
                raise QueryError(f"predict_file: {name}={value!r}; expected a file path")
        src, out = os.fspath(src), os.fspath(out)
        return predict_file(self, src, out, k, known, progress, strict, approximate)

    def _predict_relations(self, head, tail, k: int, known: str):
        batch = isinstance(head, (list, tuple, np.ndarray))
        heads, tails = (list(head), list(tail)) if batch else ([head], [tail])
        if not isinstance(tail, (list, tuple, np.ndarray)) and batch:
            tails = [tail] * len(heads)
        if len(heads) != len(tails):
            raise QueryError(f"predict: {len(heads)} heads but {len(tails)} tails")
        (h, h_rows, h_names), (t, t_rows, t_names) = self._anchors(heads), self._anchors(tails)
        found = self._top_relations(h, h_rows, t, t_rows, min(k, len(self.relations.names)), known)
        out = [Predictions(answers, a, None, b) for answers, a, b in zip(found, h_names, t_names)]
        return out if batch else out[0]

    @torch.no_grad()
    def _top_relations(self, heads: np.ndarray, head_rows: torch.Tensor, tails: np.ndarray, tail_rows: torch.Tensor,
                       k: int, known: str) -> list[list[Prediction]]:
        """Every relation scored for each (head, ?, tail): f(h, r, t) over the dataset's relations. An id −1 (a
        new entity) has no known triple."""
        count = len(self.relations.names)
        rows = self.relation_rows[:count]
        out = []
        step = max(1, self.batch_size * 64 // max(count, 1))
        for start in range(0, len(heads), step):
            h, t = heads[start:start + step], tails[start:start + step]
            score = self.scoring.scorer.score(head_rows[start:start + step].unsqueeze(1), rows.unsqueeze(0),
                                              tail_rows[start:start + step].unsqueeze(1)).float().cpu()
            flagged = np.zeros(score.shape, dtype=bool)
            if known != "keep":
                grid = np.broadcast_to(np.arange(count), score.shape)
                ok = (h >= 0) & (h < self.held) & (t >= 0) & (t < self.held)   # only the dataset's have known triples
                flagged = self.known_index().contains(np.repeat(np.where(ok, h, 0), count), grid.reshape(-1),
                                                      np.repeat(np.where(ok, t, 0), count)).reshape(score.shape)
                flagged &= ok[:, None]
                if known == "filter":
                    score[torch.from_numpy(flagged)] = float("-inf")
            best = torch.topk(score, k, dim=1)
            for q in range(len(h)):
                out.append([Prediction(i + 1, int(r), self.relations.names[int(r)], float(v), bool(flagged[q, int(r)]))
                            for i, (v, r) in enumerate(zip(best.values[q].tolist(), best.indices[q].tolist()))
                            if v != float("-inf")])
        return out

    def _top(self, anchors: np.ndarray, anchor_rows: torch.Tensor, relations: np.ndarray, direction: str, k: int,
             known: str, approximate: bool = False):
        """The answers of (anchor, relation) queries; an anchor id −1 (a new entity) has no known answer."""
        out = []
        index = self.known_index() if known != "keep" else None
        for start in range(0, len(anchors), self.batch_size):
            a, r = anchors[start:start + self.batch_size], relations[start:start + self.batch_size]
            excluded = None
            if known == "filter":
                held = np.flatnonzero((a >= 0) & (a < self.held))
                rows, cols = index.pairs(direction, a[held], r[held])
                excluded = (held[rows], cols)
            distance, entity = self._nearest(anchor_rows[start:start + self.batch_size], r, direction, k, excluded,
                                             approximate)
            flagged = np.zeros(entity.shape, dtype=bool)
            if index is not None:
                answers = entity.numpy()
                anchor = np.repeat(np.where((a >= 0) & (a < self.held), a, 0)[:, None], k, axis=1)
                inside = np.where(answers < self.held, answers, 0)
                h, t = (anchor, inside) if direction == "tail" else (inside, anchor)
                flagged = index.contains(h.reshape(-1), np.repeat(r, k), t.reshape(-1)).reshape(entity.shape)
                flagged &= ((a >= 0) & (a < self.held))[:, None] & (answers < self.held)
            for q in range(len(a)):
                out.append([Prediction(i + 1, int(e), self.entities.names[int(e)],
                                       float(self.scoring.scorer.bias - d), bool(flagged[q, i]))
                            for i, (d, e) in enumerate(zip(distance[q].tolist(), entity[q].tolist()))
                            if d != float("inf")])
        return out

    @torch.no_grad()
    def _nearest(self, anchors: torch.Tensor, relations: np.ndarray, direction: str, k: int,
                 excluded: tuple[np.ndarray, np.ndarray] | None,
                 approximate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best answers of each query (its anchor's joint row, a relation) as (negated similarity,
        entity), lower first (``best_answers``, or the answer index's candidates re-ranked)."""
        query = self.scoring.queries.evaluation_query(anchors, torch.from_numpy(relations), self.relation_rows,
                                                      head=direction == "head")
        if approximate:
            return self.answer_index().answers(self.scoring.scorer, self.scoring.kernels, query, self.joint, k,
                                               excluded)
        return best_answers(self.scoring.kernels, query, self.joint, k, excluded, self.entity_chunk)

    def answer_index(self, sample: int = 1000, seed: int = 0):
        """The FAISS index of approximate answers for this checkpoint (answer_index.py): built on first use into
        the run folder (``answer-index/``) with its search calibrated to recall@10 ≥ 0.95 against the exact
        path on ``sample`` seeded queries (random entities and relations, half of them head queries)."""
        from .answer_index import AnswerIndex, build_answer_index
        from .neighbour_index import table_digest

        if self._answer_index is not None:
            return self._answer_index
        identity = {"dataset": self.model.identity, "checkpoint": os.path.basename(self.model.source),
                    "step": self.step, "scoring": self.scoring.scorer.name,
                    "vectors_sha256": table_digest(self.joint), "relations_sha256": table_digest(self.relation_rows)}
        self._answer_index = self._saved_index(ANSWER_INDEX, identity, AnswerIndex)
        if self._answer_index is not None:
            return self._answer_index
        index = build_answer_index(derived_folder(self.model.run_dir, ANSWER_INDEX), self.joint, identity,
                                   self.scoring.scorer, self.scoring.kernels, self._sample_queries(sample, seed))
        log.info("answer index (%s, %d entities, %s %d): recall@%d %.3f against exact on %d queries, %.0f vs %.0f "
                 "queries/s", index.kind, len(self.joint), index.meta["knob_name"], index.meta["knob"],
                 index.meta["recall_k"], index.meta["recall_at_k"], index.meta["recall_queries"],
                 index.meta["approximate_queries_per_s"], index.meta["exact_queries_per_s"])
        if index.meta["approximate_queries_per_s"] < index.meta["exact_queries_per_s"]:
            log.warning("answer index: it reaches recall@%d %.2f only by visiting most of the table, slower than "
                        "the exact answers here (rows without cluster structure); approximate=False is faster",
                        index.meta["recall_k"], index.meta["target_recall"])
        self._answer_index = index
        return index

    def _sample_queries(self, count: int, seed: int) -> torch.Tensor:
        """Seeded queries of this model: random entities and the dataset's relations, tails then heads."""
        rng = np.random.default_rng(seed)
        anchors = torch.from_numpy(rng.integers(0, len(self.joint), count))
        relations = torch.from_numpy(rng.integers(0, len(self.relations.names), count))
        half = count // 2
        tails = self.scoring.queries.evaluation_query(self.joint[anchors[:half]], relations[:half],
                                                      self.relation_rows, head=False)
        heads = self.scoring.queries.evaluation_query(self.joint[anchors[half:]], relations[half:],
                                                      self.relation_rows, head=True)
        return torch.cat([tails, heads])

    def known_index(self) -> KnownIndex:
        """Known triples (train ∪ valid ∪ test) as sorted keys: in memory for held splits; for a streamed
        training split an on-disk index in the run folder (``known-index/``), built on first use in two
        streaming passes and reused while the dataset's identity is the same — a lookup per query afterwards."""
        if self._known is not None:
            return self._known
        data = self.model.data
        if self._stream is None:
            self._known = KnownIndex.of(self.model.evaluator.known_triples(), data.num_entities, data.num_relations)
            return self._known
        for folder in derived_places(self.model.run_dir, KNOWN_INDEX):
            try:
                index = KnownIndex(folder)
                if index.identity == data.identity:
                    self._known = index
                    return index
            except (OSError, ValueError, KeyError):
                pass
        self._known = self._build_known_index(derived_folder(self.model.run_dir, KNOWN_INDEX))
        return self._known

    def _build_known_index(self, folder: str) -> KnownIndex:
        from tqdm import tqdm

        from ..data.stream import StreamingTriples
        data = self.model.data
        train = StreamingTriples(self._stream[0], "train", batch_size=1 << 20, shuffle=False, manifest=self._stream[1])
        total = train.total_rows + sum(len(t) for t in self._held)
        with tqdm(total=total, desc="known-triple index", unit="triple", unit_scale=True, mininterval=1.0) as bar:
            return build_known_index(folder, itertools.chain(self._held, train), data.num_entities,
                                     data.num_relations, data.identity, progress=bar.update)

    @torch.no_grad()
    def score(self, triples) -> np.ndarray:
        """f(h, r, t) of each (head, relation, tail) given by names or ids; higher is more plausible."""
        if not isinstance(triples, (list, tuple, np.ndarray)) or not len(triples) or \
                any(not isinstance(t, (list, tuple, np.ndarray)) or len(t) != 3 for t in triples):
            raise QueryError("score: expected a non-empty list of (head, relation, tail) triples")
        triples = list(triples)
        h = torch.from_numpy(self.entities.ids_of([t[0] for t in triples]))
        r = torch.from_numpy(self.relations.ids_of([t[1] for t in triples]))
        t = torch.from_numpy(self.entities.ids_of([t[2] for t in triples]))
        return self.scoring.scorer.score(self.joint[h], self.relation_rows[r], self.joint[t]).cpu().numpy()

    @torch.no_grad()
    def neighbours(self, entity, k: int = 10, space: str = "joint", approximate: bool = False):
        """The ``k`` entities nearest to ``entity`` (itself excluded) in the joint (fused) or structural space, by
        the scorer's metric (``neighbour_metric``: Euclidean; RotatE's complex L1 distance); ``score`` is the
        negated distance. A list of entities answers each.
        ``approximate``: candidates from a FAISS index (HNSW, or IVF above a million entities) re-ranked exactly —
        for millions of entities; the index is built on first use into the run folder (``neighbour-index/SPACE``)
        with its search calibrated to recall@10 ≥ 0.95 against exact search on a sample
        (``neighbour_index(space).meta``)."""
        if space not in SPACES:
            raise QueryError(f"neighbours: space={space!r}; expected one of {', '.join(SPACES)}")
        k = checked_k(k, "neighbours")
        batch = isinstance(entity, (list, tuple, np.ndarray))
        ids, joint, names = self._anchors(list(entity) if batch else [entity])
        if space == "structural" and (ids < 0).any():
            raise QueryError("neighbours: a new entity has no structural row; ask space='joint'")
        table = self.joint if space == "joint" else self.structural
        k = min(k, len(table) - 1)
        queries, metric = (joint if space == "joint" else table[torch.from_numpy(ids)]), \
            self.scoring.scorer.neighbour_metric
        if approximate:
            index = self.neighbour_index(space)
            before = index.fallbacks
            distance, found = index.nearest(table, queries, k, exclude=ids)
            if index.fallbacks > before:
                log.info("neighbours: the index held fewer than k=%d candidates for %d of %d queries; those were "
                         "answered exactly", k, index.fallbacks - before, len(ids))
        else:
            distance, found = exact_nearest(table, queries, k, exclude=ids, metric=metric)
        out = [Predictions([Prediction(n + 1, int(e), self.entities.names[int(e)], -float(d))
                            for n, (d, e) in enumerate(zip(row_d.tolist(), row_e.tolist())) if d != float("inf")],
                           head=name) for name, row_d, row_e in zip(names, distance, found)]
        return out if batch else out[0]

    def _saved_index(self, name: str, identity: dict, open_index):
        """The index kept under ``name`` (in the run folder, else the cache) that was built for ``identity``, or
        None: one that cannot be opened or was built for other rows is passed over (and rebuilt by the caller)."""
        for folder in derived_places(self.model.run_dir, name):
            try:
                index = open_index(folder)
            except (OSError, ValueError, KeyError, RuntimeError):
                continue
            if all(index.meta.get(key) == value for key, value in identity.items()):
                return index
        return None

    def neighbour_index(self, space: str = "joint"):
        """The FAISS index of a space's table for this checkpoint (built once, kept in the run folder)."""
        from .neighbour_index import NeighbourIndex, build_neighbour_index, table_digest
        if space in self._neighbour_indexes:
            return self._neighbour_indexes[space]
        table = self.joint if space == "joint" else self.structural
        identity = {"dataset": self.model.identity, "checkpoint": os.path.basename(self.model.source),
                    "step": self.step, "metric": self.scoring.scorer.neighbour_metric,
                    "vectors_sha256": table_digest(table)}          # bound to the very rows it indexes
        index = self._saved_index(os.path.join(NEIGHBOUR_INDEX, space), identity, NeighbourIndex)
        if index is None:
            folder = derived_folder(self.model.run_dir, os.path.join(NEIGHBOUR_INDEX, space))
            index = build_neighbour_index(folder, table, identity, metric=identity["metric"])
            log.info("neighbour index (%s %s, %d entities, %s %d): recall@%d %.3f against exact on %d entities, "
                     "%.0f vs %.0f queries/s", index.kind, space, len(table), index.meta["knob_name"],
                     index.meta["knob"], index.meta["recall_k"], index.meta["recall_at_k"],
                     index.meta["recall_sample"], index.meta["approximate_queries_per_s"],
                     index.meta["exact_queries_per_s"])
        self._neighbour_indexes[space] = index
        return index


def load_run(run_dir: str, checkpoint: str | None = None, device: str = "auto", overrides=(),
             text_model: str | None = None, image_encoder: str | None = None,
             image_weights: str | None = None) -> Predictor:
    """The model of a run folder — at ``checkpoint``, else the one model selection chose (best.json), else the
    newest verified — in this process, whatever world size trained it. ``overrides``: dotted config overrides
    (e.g. ``["--data.path=..."]`` when the dataset has moved). Neither the trainer nor DeepSpeed is imported.
    ``text_model``, ``image_encoder``, ``image_weights``: the encoders of the dataset's features where they are
    not the packaged ones, for entities given by content (checked against the dataset's record)."""
    for name, value in (("run_dir", run_dir), ("checkpoint", checkpoint)):
        if not (isinstance(value, (str, os.PathLike)) or (value is None and name == "checkpoint")):
            raise QueryError(f"load_run: {name}={value!r}; expected a path")
    if not isinstance(device, str):
        raise QueryError(f"load_run: device={device!r}; expected 'auto', 'cpu' or 'cuda[:N]'")
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise QueryError(f"load_run: overrides={overrides!r}; expected a list of --key=value strings")
    checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
    return Predictor(load_trained(os.fspath(run_dir), checkpoint,
                                  parse_overrides([f"--train.device={device}", *overrides])),
                     text_model, image_encoder, image_weights)
