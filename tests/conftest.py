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
