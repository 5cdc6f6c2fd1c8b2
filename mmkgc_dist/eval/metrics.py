"""Link-prediction metrics from ranks: MRR, MR, Hits@k (configurable k), the adjusted mean rank index, each
overall (both directions, the paper's protocol), per direction, per relation category and per relation.

AMRI (Berrendorf et al., 2020) = 1 − (MR − 1) / (E[MR] − 1), where E[MR] is the mean rank a random scorer
would get: (c + 1) / 2 for a query with c candidates (the answer and every entity not filtered out). 1 is
perfect, 0 is random, < 0 worse than random; unlike MR it compares across graphs and filter settings.

Relation categories follow Bordes et al. (2013) on the training split: tails per head (tph) and heads per
tail (hpt) against 1.5 — 1-1 (both below), 1-N (tph ≥ 1.5), N-1 (hpt ≥ 1.5), N-N (both).
"""
from __future__ import annotations

import numpy as np

CATEGORIES = ("1-1", "1-N", "N-1", "N-N")
THRESHOLD = 1.5


def summarize(ranks: np.ndarray, candidates: np.ndarray | None = None, hits_at=(1, 3, 10)) -> dict:
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        return {"count": 0}
    out = {"mrr": float(np.mean(1.0 / ranks)), "mr": float(np.mean(ranks)),
           **{f"hits@{k}": float(np.mean(ranks <= k)) for k in hits_at}, "count": int(len(ranks))}
    if candidates is not None and len(candidates) == len(ranks):
        expected = float(np.mean((np.asarray(candidates, dtype=np.float64) + 1) / 2))
        out["amri"] = 1.0 - (out["mr"] - 1) / (expected - 1) if expected > 1 else 0.0
    return out


def relation_categories(relation_table: dict[str, np.ndarray], threshold: float = THRESHOLD) -> np.ndarray:
    """Category name of each relation from the training statistics (unseen relations: 1-1)."""
    many_tails = relation_table["tails_per_head"] >= threshold
    many_heads = relation_table["heads_per_tail"] >= threshold
    return np.array(CATEGORIES, dtype=object)[many_tails * 1 + many_heads * 2]


def link_prediction_metrics(ranks: dict[str, np.ndarray], triples: np.ndarray | None = None,
                            hits_at=(1, 3, 10), relation_names: list[str] | None = None,
                            categories: np.ndarray | None = None) -> dict:
    """Overall (both directions), "tail" and "head"; with ``triples`` (aligned with the ranks) also
    "per_relation" and, with ``categories``, "per_category" (each with its own head/tail split)."""
    cands = {d: ranks.get(f"{d}_candidates") for d in ("tail", "head")}
    out = _grouped(ranks, cands, np.ones(len(ranks["tail"]), dtype=bool), hits_at)
    if triples is None or len(triples) != len(ranks["tail"]):
        return out
    relations = triples[:, 1]
    if categories is not None:
        out["per_category"] = {}
        for name in CATEGORIES:
            mask = np.isin(relations, np.flatnonzero(categories == name))
            if mask.any():
                out["per_category"][name] = _grouped(ranks, cands, mask, hits_at)
    names = relation_names or [str(r) for r in range(int(relations.max(initial=-1)) + 1)]
    out["per_relation"] = {}
    for r in np.unique(relations):
        entry = _grouped(ranks, cands, relations == r, hits_at)
        if categories is not None:
            entry["category"] = str(categories[r])
        out["per_relation"][names[r]] = entry
    return out


def _grouped(ranks: dict, cands: dict, mask: np.ndarray, hits_at) -> dict:
    pick = {d: (ranks[d][mask], cands[d][mask] if cands[d] is not None else None) for d in ("tail", "head")}
    both_cands = np.concatenate([pick["tail"][1], pick["head"][1]]) if cands["tail"] is not None else None
    return {**summarize(np.concatenate([pick["tail"][0], pick["head"][0]]), both_cands, hits_at),
            "tail": summarize(*pick["tail"], hits_at), "head": summarize(*pick["head"], hits_at)}


# ------------------------------------------------------------------------------------------ reports
def metric_keys(m: dict) -> list[str]:
    return ["mrr", "mr", *sorted((k for k in m if k.startswith("hits@")), key=lambda k: int(k[5:])),
            *(["amri"] if "amri" in m else [])]


def markdown_report(results: dict, per_relation_rows: int = 50) -> str:
    """results.json's evaluations as markdown tables: overall and head vs tail, per category, per relation
    (the ``per_relation_rows`` relations with the most queries; all of them stay in results.json)."""
    lines = run_header(results) + (model_header(results["model"]) if "model" in results else [])
    for split, m in results.items():
        if not isinstance(m, dict) or "mrr" not in m:
            continue
        keys = metric_keys(m)
        lines += [f"## {split} — {m.get('protocol', '')}, ties={m.get('ties', '')}", "",
                  _table(["", *keys, "queries"], [[label, *_values(v, keys)] for label, v in
                                                  (("both", m), ("tail (h, r, ?)", m["tail"]),
                                                   ("head (?, r, t)", m["head"]))]), ""]
        if "per_category" in m:
            rows = []
            for name, v in m["per_category"].items():
                rows += [[f"{name}", *_values(v, keys)], [f"{name} tail", *_values(v["tail"], keys)],
                         [f"{name} head", *_values(v["head"], keys)]]
            lines += ["### per relation category (training tph/hpt vs 1.5)", "",
                      _table(["category", *keys, "queries"], rows), ""]
        if "per_relation" in m:
            top = sorted(m["per_relation"].items(), key=lambda kv: -kv[1]["count"])[:per_relation_rows]
            lines += [f"### per relation ({len(top)} of {len(m['per_relation'])} with the most queries)", "",
                      _table(["relation", "category", *keys, "queries"],
                             [[name, v.get("category", ""), *_values(v, keys)] for name, v in top]), ""]
    return "\n".join(lines)


def run_header(results: dict) -> list[str]:
    """The report's opening: which run, on which data, which model, under which protocol, which epoch."""
    run, model = results.get("run"), results.get("model")
    if not run or not model:
        return []
    fused = ", ".join(f"{m} {v['dim']}-d ({v['coverage']:.0%})" for m, v in model["fused"].items()) or "none"
    tested = [f"{s}: {m['protocol']}, ties={m['ties']}" for s, m in results.items()
              if isinstance(m, dict) and "protocol" in m]
    selected = ((results.get("selection") or {}).get("selected") or {})
    lines = [f"# {run['name']}", "",
             f"- dataset: {run['dataset']} ({run['entities']:,} entities, {run['relations']:,} relations) at "
             f"`{run['data']}`",
             f"- model: {model['scoring']}, d={model['dim']}, modalities fused: {fused}, MAT "
             f"{'on' if model['mat'] else 'off'}",
             f"- protocol: {'; '.join(tested) or 'not tested'}"]
    if selected:
        lines.append(f"- selected: epoch {selected['epoch']} (step {selected['step']}, valid "
                     f"{results['selection']['metric']} {selected['value']:.4f})")
    return lines + [""]


def model_header(model: dict) -> list[str]:
    """What the run fused: one row per modality with its width and coverage."""
    rows = [["structure", f"d={model['dim']}", "100%"]] + \
        [[m, str(v["dim"]), f"{v['coverage']:.1%} ({v['entities']})"] for m, v in model["fused"].items()]
    return [f"## model — {model['scoring']}, model.modalities={model['asked']}, MAT "
            f"{'on' if model['mat'] else 'off'}", "", _table(["modality", "dim", "coverage (entities)"], rows), ""]


def _values(m: dict, keys: list[str]) -> list[str]:
    return [("—" if k not in m else f"{m[k]:.1f}" if k == "mr" else f"{m[k]:.4f}") for k in keys] + \
        [str(m.get("count", 0))]


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def format_metrics(split: str, m: dict) -> str:
    """One line of a split's metrics, as the command line prints them."""
    hits = "  ".join(f"Hits@{k[5:]} {m[k]:.4f}" for k in metric_keys(m) if k.startswith("hits@"))
    amri = f"  AMRI {m['amri']:.4f}" if "amri" in m else ""
    return (f"{split:>5} [{m['protocol']}, ties={m['ties']}]  MRR {m['mrr']:.4f}  MR {m['mr']:.1f}  {hits}{amri}  "
            f"({m['count']} ranks)")
