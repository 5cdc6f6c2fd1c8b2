"""An evaluation protocol for entities the graph does not hold: ``mmkgc-dist prepare inductive DATA OUT --share S
--seed K`` holds out a seeded share of the entities with every triple that touches them.

- The unseen entities are drawn among those that have at least one modality feature and at least one triple (an
  entity with neither could not be placed or tested); half of them (seeded) are validation entities, half test.
- Every triple of DATA (train, valid and test alike) that touches no unseen entity is a training triple of OUT;
  one that touches exactly one unseen entity goes to that entity's split (valid or test); one between two unseen
  entities is dropped — counted, never silently.
- OUT keeps every entity, its name, id and features; ``entities.parquet`` marks the unseen ones (column
  ``unseen``) and the manifest records the draw (``inductive``: share, seed, counts).

Training on OUT never sees a triple of an unseen entity, and every fusion — training, evaluation, answers — treats
an unseen entity's structural row as missing (masked out of the attention, model/dropout.py): it is placed by its
content alone. It may still be drawn as a negative, fused from its content. Evaluation is the usual filtered
ranking over all entities (seen and unseen) of OUT's valid/test triples, each of which has exactly one unseen
entity — as head or as tail, either direction asked.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConfigError, DataError


def hold_out(data, share: float, seed: int) -> tuple[object, dict]:
    """``data`` (a KGData) with a share of its entities unseen: (the new KGData, the manifest record)."""
    if not 0.0 < share < 1.0:
        raise ConfigError(f"--share {share}: expected a fraction of the entities in (0, 1)")
    splits = [t for t in data.splits.values() if len(t)]
    triples = np.unique(np.concatenate(splits), axis=0) if splits else np.zeros((0, 3), np.int64)
    touched = np.zeros(data.num_entities, bool)
    touched[triples[:, 0]] = touched[triples[:, 2]] = True
    has_content = np.zeros(data.num_entities, bool)
    for features in data.features.values():
        has_content |= features.present
    candidates = np.flatnonzero(touched & has_content)
    wanted = int(round(share * data.num_entities))
    if not data.features:
        raise DataError(f"{data.name}: no modality features; an unseen entity is placed by its features — add them "
                        f"first (mmkgc-dist features text|images, prepare features)")
    if wanted < 2 or wanted > len(candidates):
        raise DataError(f"{data.name}: --share {share} asks for {wanted} unseen entities; {len(candidates)} have both "
                        f"a triple and a feature (at least 2 are needed: validation and test)")
    rng = np.random.default_rng([seed, 0x1D])
    unseen_ids = np.sort(rng.choice(candidates, wanted, replace=False))
    test_ids = np.sort(rng.choice(unseen_ids, wanted // 2, replace=False))
    unseen = np.zeros(data.num_entities, bool)
    unseen[unseen_ids] = True
    in_test = np.zeros(data.num_entities, bool)
    in_test[test_ids] = True
    count = unseen[triples[:, 0]].astype(np.int64) + unseen[triples[:, 2]]
    single = triples[count == 1]
    anchor = np.where(unseen[single[:, 0]], single[:, 0], single[:, 2])
    new_splits = {"train": triples[count == 0], "valid": single[~in_test[anchor]], "test": single[in_test[anchor]]}
    record = {"share": share, "seed": seed, "unseen": int(wanted), "unseen_valid": int(wanted - len(test_ids)),
              "unseen_test": int(len(test_ids)), "candidates": int(len(candidates)),
              "triples_between_unseen_dropped": int((count == 2).sum()),
              "duplicate_triples_merged": int(sum(len(t) for t in splits) - len(triples)),
              "source_splits": {s: int(len(t)) for s, t in data.splits.items()},
              "splits": {s: int(len(t)) for s, t in new_splits.items()}}
    out = dataclasses.replace(data, splits=new_splits, unseen=unseen, name=f"{data.name}-inductive-{share:g}-{seed}")
    return out, record


def prepare_inductive(src: str, out: str, share: float = 0.1, seed: int = 1, overwrite: bool = False) -> dict:
    """DATA → OUT with a seeded share of entities unseen (see the module's docstring); the manifest record."""
    from ..outputs import check_output
    from .format import load_dataset, write_dataset

    check_output(out, "dataset", (src,), overwrite)
    data, record = hold_out(load_dataset(src), share, seed)
    write_dataset(data, out, source=src, overwrite=overwrite, inputs=(src,), inductive=record)
    return record


def summary_line(record: dict) -> str:
    s = record["splits"]
    return (f"{record['unseen']} unseen entities ({record['unseen_valid']} validation, {record['unseen_test']} test; "
            f"share {record['share']:g}, seed {record['seed']}): train {s['train']}, valid {s['valid']}, test "
            f"{s['test']} triples; {record['triples_between_unseen_dropped']} triples between two unseen entities "
            f"dropped, {record['duplicate_triples_merged']} duplicates across the source splits merged")
