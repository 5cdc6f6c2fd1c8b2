"""Images → visual features: the packaged encoder's wiring (its own classifier names the right class for real
photographs), extraction with bad images and missing entities, shared images, and a kill -9 mid-extraction."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from support import MINI_GRAPH, REPO, cli

PIL = pytest.importorskip("PIL.Image")


def photographs() -> dict:
    """Public-domain / CC0 photographs shipped inside installed packages (test data only): matplotlib's Grace
    Hopper portrait and scikit-image's cat, coffee cup and rocket."""
    import matplotlib
    skimage = pytest.importorskip("skimage")
    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    return {"hopper": os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"),
            "cat": os.path.join(data, "chelsea.png"), "coffee": os.path.join(data, "coffee.png"),
            "rocket": os.path.join(data, "rocket.jpg")}


def test_the_packaged_encoder_with_its_own_head_names_the_right_imagenet_class():
    """Weights, architecture and preprocessing fit together: ImageNet classes of four real photographs."""
    import torch
    from mmkgc_dist.data.images import decode, load_encoder

    encoder = load_encoder(classifier=True)
    top = {}
    for name, path in photographs().items():
        pixels, reason = decode(path, encoder.image_size, encoder.mean, encoder.std)
        assert reason is None
        logits = torch.from_numpy(encoder(pixels[None]))
        top[name] = logits.topk(3).indices[0].tolist()
    assert 652 in top["hopper"]                          # military uniform
    assert top["cat"][0] in range(281, 286)              # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top["coffee"][0] in (967, 968)                # espresso, cup
    assert top["rocket"][0] in (657, 744, 812)           # missile, projectile, space shuttle


def _dataset(tmp_path) -> tuple[str, list[str]]:
    out = str(tmp_path / "ds")
    assert cli("prepare", "synthetic", out, *MINI_GRAPH, cwd=tmp_path).returncode == 0
    from mmkgc_dist.data.format import read_manifest, recorded_path
    m = read_manifest(out)
    return out, pq.read_table(recorded_path(out, m, m["entities"])).column("name").to_pylist()


def _images(folder, names, skip=(), shape=(40, 48)) -> None:
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        if i in skip:
            continue
        os.makedirs(folder / name, exist_ok=True)
        PIL.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(folder / name / "a.png")


def _features(ds: str, modality: str = "visual") -> tuple[np.ndarray, np.ndarray]:
    from mmkgc_dist.data.features import load_features
    from mmkgc_dist.data.format import read_manifest
    m = read_manifest(ds)
    f = load_features(os.path.join(ds, m["modalities"][modality]["file"]), m["num_entities"])
    return f.values, f.present


def test_images_with_a_corrupt_file_a_bomb_a_truncated_file_and_an_entity_without_images(tmp_path):
    ds, names = _dataset(tmp_path)
    imgs = tmp_path / "imgs"
    _images(imgs, names, skip={5})
    (imgs / names[7] / "b.jpg").write_bytes(b"not an image at all")              # corrupt, beside a good one
    os.remove(imgs / names[9] / "a.png")
    PIL.new("1", (9000, 9000)).save(imgs / names[9] / "bomb.png")                 # 81 Mpx in a few KB
    good = imgs / names[11] / "a.png"
    good.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])             # truncated, its only image
    # one image under two entities: entity 20's file is entity 3's
    (imgs / names[20] / "a.png").write_bytes((imgs / names[3] / "a.png").read_bytes())
    r = cli("features", "images", ds, "--images", imgs, "--workers", "1", "--piece-entities", "16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "117 of 120 entities (3 without a usable image, masked)" in r.stdout
    values, present = _features(ds)
    assert values.shape[1] == 1280
    assert set(np.flatnonzero(~present)) == {5, 9, 11}             # no image; a bomb only; a truncated file only
    assert present[7]                                              # its good image counts, its corrupt one not
    assert np.array_equal(values[3], values[20])
    report = json.load(open(os.path.join(ds, "features", "visual-report.json")))
    reasons = {os.path.basename(f["image"]): f["reason"] for f in report["failures"]}
    assert "not an image format" in reasons["b.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "truncated" in reasons["a.png"]
    assert report["images_failed"] == 3 and report["missing"] == 3
    assert not os.path.exists(os.path.join(ds, ".extract"))                      # the job folder is gone
    assert cli("verify", ds, cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_a_killed_extraction_resumes_without_encoding_the_finished_parts_again(tmp_path):
    ds, names = _dataset(tmp_path)
    imgs = tmp_path / "imgs"
    _images(imgs, names, shape=(160, 200))
    cmd = [sys.executable, "-m", "mmkgc_dist.cli", "features", "images", ds, "--images", str(imgs),
           "--workers", "0", "--piece-entities", "10", "--batch-size", "4"]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jobs = os.path.join(ds, ".extract")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = [f for d in (os.listdir(jobs) if os.path.isdir(jobs) else ()) for f in
                os.listdir(os.path.join(jobs, d)) if f.endswith(".json")]
        if len(done) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    job = os.path.join(jobs, os.listdir(jobs)[0])
    finished = {f for f in os.listdir(job) if f.endswith(".parquet") and
                os.path.exists(os.path.join(job, f[:-len(".parquet")] + ".json"))}
    assert 3 <= len(finished) < 12
    seen = []
    from mmkgc_dist.data import extraction
    original = extraction.write_piece
    extraction.write_piece = lambda folder, piece, result: seen.append(piece.name) or original(folder, piece, result)
    try:
        from mmkgc_dist.data.images import extract_images
        summary = extract_images(ds, str(imgs), batch_size=4, workers=0, piece_entities=10, show_progress=False)
    finally:
        extraction.write_piece = original
    assert summary["pieces_reused"] >= len(finished) and summary["present"] == 120
    assert not {f[:-len(".parquet")] for f in finished} & set(seen)       # none of them encoded again
    assert len(seen) == 12 - summary["pieces_reused"]


@pytest.mark.slow
def test_two_ranks_under_torchrun_extract_the_rows_of_one_process(tmp_path):
    """Each rank encodes the pieces whose entities it owns (row-wise blocks) and writes its own parts; rank 0
    merges them: the dataset's rows equal a one-process extraction's."""
    ds, names = _dataset(tmp_path)
    imgs = tmp_path / "imgs"
    _images(imgs, names, skip={2, 77})
    args = ["features", "images", ds, "--images", str(imgs), "--workers", "0", "--piece-entities", "16"]
    assert cli(*args, cwd=tmp_path).returncode == 0
    alone, present_alone = _features(ds)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "--module", "mmkgc_dist.cli", *args, "--restart"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote visual features") == 1                       # rank 0 merged, once
    both, present_both = _features(ds)
    assert np.array_equal(present_both, present_alone) and present_alone.sum() == 118
    assert np.allclose(both, alone, atol=1e-5)
