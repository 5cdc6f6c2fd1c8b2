"""Many queries at once: ``predict --batch FILE --output OUT`` and ``Predictor.predict_file`` / ``predict_queries``.

A query file has the columns ``head``, ``relation``, ``tail`` (a header row in TSV/CSV; column names in Parquet);
in each row exactly one is asked — empty, ``?`` or null — and the other two are entity and relation names. The
queries are read, scored and written in chunks of ``eval.batch_size`` (memory bounded by the chunk, not the
file), grouped by what they ask (tails, heads, relations), with a progress bar. The answers — one row per (query,
answer): ``query`` (the query's 0-based position in the file), ``head``/``relation``/``tail`` as given,
``asked``, ``rank``, ``answer``, ``answer_id``, ``score``, ``known`` — go to Parquet (``.parquet``) or JSON lines
(any other name), written to a temporary name and renamed when complete. Queries that cannot be answered (an
unknown name, nothing or two things asked) are listed, with their data row and the reason, in
``<output stem>.unknown.jsonl``; the others are answered (``strict``: the first such query refuses the file).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import DataError, QueryError
from ..outputs import atomic_file, check_output_file

COLUMNS = ("head", "relation", "tail")
ASKED = ("", "?")
ANSWER_FIELDS = ("query", "head", "relation", "tail", "asked", "rank", "answer", "answer_id", "score", "known")
SCHEMA = pa.schema([("query", pa.int64()), ("head", pa.string()), ("relation", pa.string()), ("tail", pa.string()),
                    ("asked", pa.string()), ("rank", pa.int32()), ("answer", pa.string()),
                    ("answer_id", pa.int64()), ("score", pa.float32()), ("known", pa.bool_())],
                   metadata={b"mmkgc-dist": b"predict-batch"})


def asked_of(query, where: str) -> str:
    """Which of head/relation/tail a query (h, r, t) asks: the one that is None, empty or '?'."""
    missing = [c for c, v in zip(COLUMNS, query) if v is None or (isinstance(v, str) and v.strip() in ASKED)]
    if len(missing) != 1:
        raise DataError(f"{where}: expected exactly one of head, relation, tail to be asked (empty, '?' or null), "
                        f"got {'none' if not missing else ' and '.join(missing)} in {tuple(query)}")
    return missing[0]


def predict_queries(predictor, queries: Iterable, k: int = 10, known: str = "mark", where: str = "query",
                    approximate: bool = False):
    """Predictions for each (head, relation, tail) with one of them asked, in the order given."""
    if isinstance(queries, (str, bytes)) or not hasattr(queries, "__iter__"):
        raise QueryError(f"{where}s: expected a list of (head, relation, tail) rows, got {type(queries).__name__}")
    queries = list(queries)
    bad = next((i for i, q in enumerate(queries) if not isinstance(q, (list, tuple, np.ndarray)) or len(q) != 3), None)
    if bad is not None:
        raise QueryError(f"{where} {bad}: expected a (head, relation, tail) row, got {str(queries[bad])[:200]}")
    queries = [tuple(q) for q in queries]
    asked = [asked_of(q, f"{where} {i}") for i, q in enumerate(queries)]
    out: list = [None] * len(queries)
    for kind in COLUMNS:
        at = [i for i, a in enumerate(asked) if a == kind]
        if not at:
            continue
        h, r, t = (None if kind == c else [queries[i][j] for i in at] for j, c in enumerate(COLUMNS))
        for i, answers in zip(at, predictor.predict(head=h, relation=r, tail=t, k=k, known=known,
                                                    approximate=approximate)):
            out[i] = answers
    return out


def read_queries(path: str, chunk: int) -> Iterator[list[tuple]]:
    """Chunks of (head, relation, tail) rows of a query file (Parquet, CSV, TSV); a missing column is a
    DataError naming the file."""
    if path.endswith(".parquet"):
        reader = _parquet_file(path)
        _check_columns(path, reader.schema_arrow.names)
        batches = reader.iter_batches(batch_size=chunk, columns=list(COLUMNS))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{path}: unreadable ({' '.join(str(exc).split())[:200]})") from None
            yield list(zip(*(batch.column(c).to_pylist() for c in COLUMNS)))
    delimiter = "," if path.endswith(".csv") else "\t"
    try:
        reader = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS},
                                                                     strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: not a readable {'CSV' if delimiter == ',' else 'TSV'} query file with a header "
                        f"row: {' '.join(str(exc).split())}") from None
    _check_columns(path, reader.schema.names)
    rows: list = []
    try:
        for batch in reader:
            rows += zip(*(batch.column(c).to_pylist() for c in COLUMNS))
            while len(rows) >= chunk:
                yield rows[:chunk]
                rows = rows[chunk:]
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: {' '.join(str(exc).split())}") from None
    if rows:
        yield rows


def _check_columns(path: str, names: list[str]) -> None:
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}: no column(s) {missing}; a query file has the columns head, relation, tail "
                        f"(found {names})")


def predict_file(predictor, src: str, out: str, k: int = 10, known: str = "mark", progress: bool = True,
                 strict: bool = False, approximate: bool = False) -> dict:
    """Answer every query of ``src`` into ``out``. A query naming an unknown entity or relation (or asking
    none or several) is left out and listed with its data row and reason in ``unknown_file(out)`` — or, with
    ``strict``, refused with a DataError naming its row before anything is written.
    {"queries", "answered", "unknown", "unknown_file", "answers", "seconds", "queries_per_s"}."""
    import time

    from tqdm import tqdm

    if not os.path.isfile(src):
        raise DataError(f"--batch {src}: not found")
    check_output_file(out, "--output", is_answers_file)
    side = unknown_file(out)
    check_output_file(side, "the unknown-queries file", is_unknown_file)
    total = _parquet_file(src).metadata.num_rows if src.endswith(".parquet") else None
    t0, done, answers, unknown = time.time(), 0, 0, []
    bar = tqdm(total=total, desc="predict", unit="query", disable=not progress, mininterval=1.0)
    try:
        with atomic_file(out) as temp, _Writer(temp, parquet=out.endswith(".parquet")) as writer:
            for rows in read_queries(src, predictor.batch_size):
                good = []
                for i, query in enumerate(rows):
                    problem = query_problem(predictor, query)
                    if problem is None:
                        good.append(i)
                        continue
                    line = "" if src.endswith(".parquet") else f" (line {done + i + 2})"
                    if strict:
                        raise QueryError(f"{src}: data row {done + i + 1}{line}: {problem}")
                    unknown.append({"query": done + i, "row": done + i + 1, **dict(zip(COLUMNS, map(_plain, query))),
                                    "reason": problem})
                found = predict_queries(predictor, [rows[i] for i in good], k, known, where=f"{src} row",
                                        approximate=approximate)
                answers += writer.write([done + i for i in good], [rows[i] for i in good], found)
                done += len(rows)
                bar.update(len(rows))
    finally:
        bar.close()
    if unknown:
        with atomic_file(side) as temp, open(temp, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in unknown)
    seconds = time.time() - t0
    return {"queries": done, "answered": done - len(unknown), "unknown": len(unknown),
            "unknown_file": side if unknown else None, "answers": answers, "seconds": round(seconds, 3),
            "queries_per_s": round(done / max(seconds, 1e-9), 1)}


def query_problem(predictor, query) -> str | None:
    """Why a query cannot be answered (what it asks, or a name or id it gives), or None."""
    try:
        asked = asked_of(query, "")
        for column, value in zip(COLUMNS, query):
            if column != asked:
                (predictor.relations if column == "relation" else predictor.entities).id(value)
    except (QueryError, DataError) as bad:
        return str(bad).lstrip(": ")
    return None


def unknown_file(out: str) -> str:
    """Where the queries a batch could not answer are listed: ``answers.parquet`` → ``answers.unknown.jsonl``."""
    return os.path.splitext(out)[0] + ".unknown.jsonl"


UNKNOWN_FIELDS = ("query", "row", "head", "relation", "tail", "reason")


def is_unknown_file(path: str) -> bool:
    """An earlier batch's list of unanswered queries (replaced without asking)."""
    try:
        with open(path) as fh:
            first = json.loads(fh.readline() or "null")
        return isinstance(first, dict) and set(first) == set(UNKNOWN_FIELDS)
    except (OSError, ValueError):
        return False


def _parquet_file(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet query file ({' '.join(str(exc).split())[:200]})") from None


def is_answers_file(path: str) -> bool:
    """An earlier ``predict --batch`` output (replaced without asking)."""
    try:
        if path.endswith(".parquet"):
            return (pq.read_schema(path).metadata or {}).get(b"mmkgc-dist") == b"predict-batch"
        with open(path) as fh:
            first = json.loads(fh.readline() or "null")
        return isinstance(first, dict) and set(first) == set(ANSWER_FIELDS)
    except (OSError, ValueError, pa.ArrowInvalid):
        return False


def _plain(value):
    """A query's value as JSON and Parquet take it (a numpy integer id as a Python int)."""
    return int(value) if isinstance(value, np.integer) else value


class _Writer:
    """Answer rows into Parquet or JSON lines at ``path`` (a temporary name: ``atomic_file`` moves it in)."""

    def __init__(self, path: str, parquet: bool):
        self.parquet = pq.ParquetWriter(path, SCHEMA) if parquet else None
        self.text = None if parquet else open(path, "w")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, positions: list[int], rows: list, found: list) -> int:
        """Answer rows of the queries at ``positions`` (0-based rows of the query file)."""
        records = [{"query": at, "head": _plain(q[0]), "relation": _plain(q[1]), "tail": _plain(q[2]),
                   "asked": asked_of(q, ""),
                    "rank": p.rank, "answer": p.name, "answer_id": p.id, "score": p.score, "known": p.known}
                   for at, q, answers in zip(positions, rows, found) for p in answers]
        for r in records:
            r[r["asked"]] = None
        if self.parquet is not None:
            for r in records:        # Parquet's query columns are text: an id asked as a number is its decimal
                for c in COLUMNS:
                    if r[c] is not None and not isinstance(r[c], str):
                        r[c] = str(r[c])
            self.parquet.write_table(pa.Table.from_pylist(records, schema=SCHEMA))
        else:
            self.text.writelines(json.dumps(r) + "\n" for r in records)
        return len(records)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
            self.parquet = None
        if self.text is not None:
            self.text.close()
            self.text = None
