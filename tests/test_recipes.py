"""Dataset recipes over a local HTTP server (no network): the benchmark splits from ../shared/datasets served as
the recipe's URL layout, counts and digests checked, converted with the benchmark's known duplicates counted.
Skips when the shared datasets are absent."""
import functools
import http.server
import json
import os
import shutil
import threading

import pytest

from support import cli

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED, "MKG-W", "train2id.txt")),
                                reason="../shared/datasets not present")


@pytest.fixture
def served(tmp_path):
    """(base URL, served folder): a copy of MKG-W and DB15K behind a local HTTP server."""
    root = tmp_path / "www"
    for name in ("MKG-W", "DB15K"):
        shutil.copytree(os.path.join(SHARED, name), root / name)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def prepare(tmp_path, *args):
    return cli("prepare", "dataset", *args, cwd=tmp_path)


def test_db15k_recipe_converts_and_counts_known_duplicates(served, tmp_path):
    base, _ = served
    res = prepare(tmp_path, "DB15K", "db15k", "--base-url", base, "--no-text-features")
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.load(open(tmp_path / "db15k" / "manifest.json"))
    assert manifest["num_entities"] == 12842 and manifest["num_relations"] == 279
    assert {s: v["rows"] for s, v in manifest["splits"].items()} == {"train": 79222, "valid": 9904, "test": 9902}
    assert manifest["recipe"]["name"] == "DB15K" and manifest["recipe"]["url"] == f"{base}/DB15K"
    assert len(manifest["recipe"]["sha256"]) == 5 and manifest["checks"]["duplicates"]["valid"] == 2423


def test_recipe_digests_are_pinned_whatever_the_url(served, tmp_path):
    """The published commit's digests ship with the package: a changed file is refused at any URL — also one
    never fetched before, and also under another name for the same server."""
    base, root = served
    assert prepare(tmp_path, "mkg-w", "a", "--base-url", base).returncode == 0
    train = root / "MKG-W" / "train2id.txt"
    lines = train.read_text().splitlines()
    h, t, r = lines[1].split()
    lines[1] = f"{t} {h} {r}"                                # same counts, one triple reversed
    train.write_text("\n".join(lines) + "\n")
    for url in (base, base.replace("127.0.0.1", "localhost"), f"file://{root}"):
        changed = prepare(tmp_path, "MKG-W", "c", "--base-url", url)
        errors = [l for l in changed.stderr.splitlines() if l.startswith("error:")]
        assert changed.returncode == 2 and len(errors) == 1, changed.stderr[-3000:]
        assert "MKG-W/train2id.txt: SHA-256" in errors[0] and "pinned in mmkgc-dist" in errors[0], errors
        assert not (tmp_path / "c").exists()


def test_an_oversized_recipe_file_is_not_read_whole(served, tmp_path):
    base, root = served
    with open(root / "MKG-W" / "entity2id.txt", "ab") as fh:
        fh.write(b"x" * (8 << 20))
    res = prepare(tmp_path, "MKG-W", "big", "--base-url", base)
    assert res.returncode == 2 and "larger than the published file (672264 bytes)" in res.stderr, res.stderr[-2000:]


def test_recipe_counts_and_unknown_names(served, tmp_path):
    base, root = served
    valid = root / "MKG-W" / "valid2id.txt"
    valid.write_text("\n".join(valid.read_text().splitlines()[:-1]) + "\n")      # one record missing
    short = prepare(tmp_path, "MKG-W", "x", "--base-url", base)
    assert short.returncode == 2 and "valid2id.txt: 4276 records declared and 4275 present; the benchmark has 4276" \
        in short.stderr, short.stderr[-2000:]
    unknown = prepare(tmp_path, "FB15K", "y", "--base-url", base)
    assert unknown.returncode == 2 and "unknown dataset 'FB15K'; recipes: DB15K, MKG-W, MKG-Y" in unknown.stderr
    missing = prepare(tmp_path, "MKG-Y", "z", "--base-url", base)          # not served here
    assert missing.returncode == 2 and "MKG-Y/entity2id.txt: cannot be read" in missing.stderr, missing.stderr
    assert not any((tmp_path / n).exists() for n in "xyz")


def test_recipes_make_text_features_where_entity_names_are_words():
    """DB15K (DBpedia URIs) and MKG-Y (YAGO names such as Libreville) get name-text features; MKG-W's Wikidata
    ids carry no text."""
    from mmkgc_dist.data.openke import readable_name
    from mmkgc_dist.data.recipes import RECIPES
    assert {name: r.text_names for name, r in RECIPES.items()} == {"DB15K": True, "MKG-W": False, "MKG-Y": True}
    assert readable_name("Gilles_Mbang_Ondo") == "Gilles Mbang Ondo"
    assert readable_name("<http://dbpedia.org/resource/Caf%C3%A9_de_Flore>") == "Café de Flore"
