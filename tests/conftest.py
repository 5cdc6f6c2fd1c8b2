import os
import tempfile
import uuid
import warnings

import psutil
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(REPO), "shared", "datasets")
torch.set_num_threads(1)
# Every process a test starts inherits this mark, so one left running by a test (a torchrun worker orphaned by a
# timed-out launcher, a rank hung on a dead peer) is found and stopped before the next test instead of taking a
# core, a port or a lock from every test after it.
SESSION_MARK = ("MMKGC_TEST_SESSION", uuid.uuid4().hex)
os.environ[SESSION_MARK[0]] = SESSION_MARK[1]
# The digest cache of dataset files (data/records.py) lives in the session's own folder, not the user's ~/.cache
os.environ.setdefault("MMKGC_DIST_CACHE", tempfile.mkdtemp(prefix="mmkgc-digests-"))


def _marked_processes() -> dict[int, psutil.Process]:
    found = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(SESSION_MARK[0]) == SESSION_MARK[1]:
                found[proc.pid] = proc
        except psutil.Error:
            continue
    return found


@pytest.fixture(autouse=True)
def no_process_outlives_its_test(request):
    before = set(_marked_processes())
    yield
    left = [p for pid, p in _marked_processes().items() if pid not in before]
    for proc in left:
        try:
            names = " ".join(proc.cmdline()[:4])
            proc.kill()
            warnings.warn(f"{request.node.nodeid} left process {proc.pid} running ({names}); killed it")
        except psutil.Error:
            pass


@pytest.fixture
def repo():
    return REPO


@pytest.fixture
def db15k():
    path = os.path.join(SHARED_DATASETS, "DB15K")
    if not os.path.exists(os.path.join(path, "train2id.txt")):
        pytest.skip(f"DB15K split folder not found at {path}")
    return path


