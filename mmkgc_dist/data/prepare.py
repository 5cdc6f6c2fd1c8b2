"""What the data commands do (``mmkgc-dist prepare ...`` and ``features text``), as functions the command line
calls and a user may call: an OpenKE folder converted, a benchmark fetched by name and converted, labeled triples
converted out of core, features added, text features encoded from entity names."""
from __future__ import annotations

from ..errors import ConfigError


def prepare_openke(src: str, out: str, overwrite: bool = False, allow_duplicates: bool = False,
                   allow_overlap: bool = False, name: str | None = None, source: str | None = None,
                   recipe: dict | None = None) -> dict:
    """An OpenKE folder (path or fsspec URL) → a dataset at ``out``, its splits checked; the manifest."""
    from ..outputs import check_output
    from .checks import check_splits
    from .format import write_dataset
    from .openke import SPLIT_FILES, read_openke

    check_output(out, "dataset", (src,), overwrite)               # before reading: fail fast
    data = read_openke(src, name)
    origin = {s: f"{(source or src).rstrip('/')}/{f}" for s, f in SPLIT_FILES.items()}
    checks = check_splits(data.splits, origin, allow_duplicates, allow_overlap,
                          describe=lambda row: f"{data.entity_names[row[0]]} {data.relation_names[row[1]]} "
                                               f"{data.entity_names[row[2]]}")
    return write_dataset(data, out, source=source or src, overwrite=overwrite, inputs=(src,),
                         checks=checks.as_manifest(), recipe=recipe)


def prepare_recipe(name: str, out: str, base_url: str | None = None, overwrite: bool = False,
                   text_features: bool = True) -> dict:
    """A benchmark by name (DB15K, MKG-W, MKG-Y): fetched (counts and digests checked against the pinned commit,
    at any URL), converted, and — where its names are words — text features encoded from them. The recipe
    record written into the manifest."""
    import tempfile

    from ..outputs import check_output
    from .recipes import BASE_URL, COMMIT, fetch, recipe

    r = recipe(name)
    check_output(out, "dataset", (), overwrite)                   # before the download: fail fast
    base = base_url or BASE_URL
    with tempfile.TemporaryDirectory(prefix="mmkgc-dist-recipe-") as folder:
        digests = fetch(r, base, folder)
        record = {"name": r.name, "url": f"{base.rstrip('/')}/{r.name}", "sha256": digests, "commit": COMMIT}
        prepare_openke(folder, out, overwrite, r.allow_duplicates, r.allow_overlap, name=r.name,
                       source=record["url"], recipe=record)
    if r.text_names and text_features:
        text_features_from_names(out)
    return record


def prepare_triples(out: str, sources: dict[str, str], columns: str = "head,relation,tail",
                    delimiter: str | None = None, header: bool = False, no_header: bool = False,
                    skip_malformed: bool = False, strip_labels: bool = False, allow_duplicates: bool = False,
                    allow_overlap: bool = False, name: str | None = None, overwrite: bool = False) -> dict:
    """Labeled triples (TSV/CSV, compressed or not, at any URL) → a dataset, out of core; the manifest."""
    from .convert import TextLayout, convert_triples

    if header and no_header:
        raise ConfigError("--header and --no-header: choose one")
    layout = TextLayout(tuple(columns.split(",")), delimiter, header, skip_malformed, check_header=not no_header,
                        strip_labels=strip_labels, allow_duplicates=allow_duplicates, allow_overlap=allow_overlap)
    return convert_triples(out, sources, layout, name=name, overwrite=overwrite)


def conversion_report(manifest: dict) -> list[str]:
    """What a triple conversion skipped or changed, and its counts, as lines to print."""
    lines = []
    for split, info in manifest["conversion"].items():
        if isinstance(info, dict) and info["malformed_skipped"]:
            lines.append(f"{split}: skipped {info['malformed_skipped']} malformed rows (first: "
                         f"{info['first_skipped'][0]})")
        if isinstance(info, dict) and info.get("labels_stripped"):
            lines.append(f"{split}: stripped surrounding whitespace from {info['labels_stripped']} labels")
    lines.append(f"{manifest['num_entities']} entities, {manifest['num_relations']} relations, "
                 + ", ".join(f"{s} {v['rows']}" for s, v in manifest["splits"].items())
                 + f" in {manifest['conversion']['seconds']:.1f}s")
    return lines


def prepare_synthetic(out: str, settings: list[tuple[str, str]] = (), overwrite: bool = False) -> dict:
    """The generated default graph (``data.synthetic`` keys as (name, value) pairs) → a dataset."""
    from ..config import load_config
    from .format import write_dataset
    from .synthetic import generate

    cfg = load_config(None, [(f"data.synthetic.{k}", v) for k, v in settings])
    return write_dataset(generate(cfg.data.synthetic), out, source="synthetic", overwrite=overwrite)


def text_features_from_names(dataset: str, model: str | None = None, batch_size: int = 256,
                             names: str = "uri") -> int:
    """Text features encoded from the entity names (data/text.py: cached, resumable), added to the dataset;
    their width."""
    from .text import extract_texts

    summary = extract_texts(dataset, None, model=model, batch_size=batch_size, name_style=names,
                            show_progress=False)
    return summary["dim"]
