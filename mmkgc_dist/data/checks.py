"""Checks on whole splits that a user may or may not mean: duplicate triples within a split, and evaluation
triples that also occur in an earlier split (valid or test in train, test in valid).

Both are errors by default, reported together in one message (each naming the file, its count and first data
row); ``--allow-duplicates`` / ``--allow-overlap`` keep
the rows, and the counts go into the manifest's ``checks`` and onto the terminal. Nothing is dropped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

log = logging.getLogger("mmkgc_dist")
OVERLAPS = (("valid", "train"), ("test", "train"), ("test", "valid"))


def triple_keys(*arrays: np.ndarray) -> list[np.ndarray]:
    """One comparable key per (head, relation, tail) row, the same kind for every array: packed into 63 bits
    when all ids fit in 21 bits, else (head, relation, tail) as one structured value."""
    arrays = [np.ascontiguousarray(a, dtype=np.int64).reshape(-1, 3) for a in arrays]
    if max((int(a.max()) for a in arrays if len(a)), default=0) < (1 << 21):
        return [(a[:, 0] << 42) | (a[:, 1] << 21) | a[:, 2] for a in arrays]
    row = np.dtype([("h", np.int64), ("r", np.int64), ("t", np.int64)])
    return [a.view(row).ravel() for a in arrays]


def repeated_rows(triples: np.ndarray) -> tuple[int, int, int]:
    """(rows repeating an earlier row, index of the first such row, index of the row it repeats)."""
    keys, = triple_keys(triples)
    if len(keys) < 2:
        return 0, -1, -1
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    count = int(same.sum())
    if not count:
        return 0, -1, -1
    later = order[1:][same]                      # every repeat (stable sort: the earlier copy comes first)
    first = int(later.min())
    earlier = int(np.flatnonzero(keys == keys[first])[0])
    return count, first, earlier


def rows_in(triples: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """(rows of ``triples`` that also occur in ``other``, index of the first)."""
    if len(triples) == 0 or len(other) == 0:
        return 0, -1
    found = np.isin(*triple_keys(triples, other))
    count = int(found.sum())
    return count, (int(np.flatnonzero(found)[0]) if count else -1)


@dataclass
class SplitChecks:
    duplicates: dict[str, int] = field(default_factory=dict)
    overlap: dict[str, int] = field(default_factory=dict)      # "valid_in_train": n, ...
    checked: bool = True

    def as_manifest(self) -> dict:
        if not self.checked:
            return {"checked": False}
        return {"checked": True, "duplicates": self.duplicates, "overlap": self.overlap}


def check_splits(splits: dict[str, np.ndarray], origin: dict[str, str], allow_duplicates: bool = False,
                 allow_overlap: bool = False, describe=None) -> SplitChecks:
    """Count duplicates and overlaps; one DataError listing every kind the user did not allow (each with its
    count, its first row and the flag that accepts it), so a dataset is fixed in one pass, not one error at a
    time. ``origin`` names each split's file; ``describe(row)`` renders a triple for messages."""
    describe = describe or (lambda row: " ".join(str(int(v)) for v in row))
    result, problems = SplitChecks(), []
    for split, triples in splits.items():
        count, first, earlier = repeated_rows(triples)
        result.duplicates[split] = count
        if count and not allow_duplicates:
            problems.append(f"{origin[split]}: {count} duplicate rows in {split}, the first data row {first + 1} "
                            f"({describe(triples[first])}) repeating data row {earlier + 1} (--allow-duplicates "
                            f"keeps them)")
    for split, other in OVERLAPS:
        if split not in splits or other not in splits:
            continue
        count, first = rows_in(splits[split], splits[other])
        result.overlap[f"{split}_in_{other}"] = count
        if count and not allow_overlap:
            problems.append(f"{origin[split]}: {count} {split} rows also in {other}, the first data row {first + 1} "
                            f"({describe(splits[split][first])}) (--allow-overlap keeps them)")
    if problems:
        flags = sorted({p[p.rindex("(--") + 1:p.rindex(" keeps")] for p in problems})
        raise DataError(f"{len(problems)} problem(s) in the splits: " + "; ".join(problems) +
                        f" — fix the files, or pass {' and '.join(flags)} to keep the rows (counted in the manifest)")
    for line in report_lines(result):
        log.warning(line)
    return result


def report_lines(checks: SplitChecks) -> list[str]:
    lines = [f"{split}: {n} duplicate rows kept (--allow-duplicates)" for split, n in checks.duplicates.items() if n]
    lines += [f"{key.replace('_in_', ' rows also in ')}: {n} (kept, --allow-overlap)"
              for key, n in checks.overlap.items() if n]
    return lines
