import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(REPO), "shared", "datasets")
torch.set_num_threads(1)


@pytest.fixture
def repo():
    return REPO


@pytest.fixture
def db15k():
    path = os.path.join(SHARED_DATASETS, "DB15K")
    if not os.path.exists(os.path.join(path, "train2id.txt")):
        pytest.skip(f"DB15K split folder not found at {path}")
    return path


def run_gloo_ranks(target, world: int, tmp_path, timeout: float = 120) -> None:
    """Spawn ``world`` real processes running ``target(rank, rendezvous_file, out_folder)`` (a gloo file
    rendezvous); each must exit 0 within ``timeout`` seconds."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, str(tmp_path / "rendezvous"), str(tmp_path))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        assert p.exitcode == 0
