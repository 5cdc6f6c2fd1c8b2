"""What several test files share: the repository, the tiny configs, the command-line runner, hostile payloads and
folder snapshots. Test files import from here, never from one another."""
import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# The tests' configs, one vocabulary: a base size named for what it is for, and a test's own changes on top of it
# (``settings(TINY, "--train.epochs=1")``, later keys winning). A test file defines no graph or model of its own.
# A graph and model small enough for a command-line run in seconds (predict, selection, trust, ranks).
TINY = ["--data.synthetic.num_entities=300", "--data.synthetic.num_triples=2400", "--model.dim=8",
        "--train.batch_size=64", "--train.num_negatives=8", "--mat.hidden=16", "--mat.noise_dim=4",
        "--train.compile=false", "--train.threads=1", "--train.epochs=2"]
# Smaller still, one epoch: the bad-input, safety and fault cases, which run a command once per case.
MINI = ["--data.synthetic.num_entities=120", "--data.synthetic.num_triples=900", "--model.dim=8",
        "--train.epochs=1", "--train.batch_size=128", "--train.num_negatives=4", "--mat.hidden=16",
        "--mat.noise_dim=4", "--train.compile=false", "--train.threads=1", "--eval.batch_size=64"]
MINI_GRAPH = ["--num_entities=120", "--num_triples=900", "--visual_dim=8", "--text_dim=8"]   # prepare synthetic
MINI_GRAPH_CONFIG = ["--data.synthetic." + item[2:] for item in MINI_GRAPH]                 # the same, as config
# Large enough that a few epochs measurably learn (tests that compare a trained model with an untrained one).
LEARNING = ["--data.synthetic.num_entities=600", "--data.synthetic.num_triples=6000", "--model.dim=16",
            "--train.batch_size=256", "--train.num_negatives=16", "--mat.hidden=32", "--mat.noise_dim=8",
            "--train.compile=false", "--train.threads=1"]


def settings(base, *changes) -> list[str]:
    """``base`` with ``changes`` (``--key=value`` items) applied: one item per key, later keys winning."""
    merged = {}
    for item in [*base, *changes]:
        key, _, value = item.partition("=")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def pairs(base, *changes) -> list[tuple[str, str]]:
    """``settings`` as (key, value) pairs, the form ``load_config`` takes."""
    return [(item[2:].partition("=")[0], item.partition("=")[2]) for item in settings(base, *changes)]


def overrides(base, *changes) -> dict[str, str]:
    """``settings`` as the API's ``overrides`` mapping."""
    return dict(pairs(base, *changes))

def cli(*args, cwd, env=None, timeout=600, fresh=False) -> subprocess.CompletedProcess:
    """``mmkgc-dist ARGS``, output captured: in this process (``cli_in_process``) unless a fresh interpreter is
    needed — ``fresh``, an environment of its own (fault points, threads), or ``--distributed`` (a process group
    must not outlive the command in the test process)."""
    if not fresh and env is None and "--distributed" not in map(str, args):
        return cli_in_process(*args, cwd=cwd)
    return cli_subprocess(*args, cwd=cwd, env=env, timeout=timeout)


def cli_subprocess(*args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``mmkgc-dist ARGS`` in a fresh interpreter (one thread, no progress bars), output captured."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, TQDM_DISABLE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "mmkgc_dist.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def cli_in_process(*args, cwd) -> subprocess.CompletedProcess:
    """``mmkgc-dist ARGS`` in this process, in ``cwd``, output captured: ``cli.entry`` never exits, so a command's
    exit code and its one error line are read without starting an interpreter (the exit codes of the console
    script itself are pinned by a few subprocess tests in test_cli.py)."""
    import contextlib
    import io

    import logging

    from mmkgc_dist.cli import entry
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    logger = logging.getLogger("mmkgc_dist")      # the tool's log lines, as the console script prints them
    handler, level = logging.StreamHandler(err), logger.level
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code, line = entry([str(a) for a in args])
            if line:
                print(line, file=sys.stderr)
    finally:
        os.chdir(here)
        logger.removeHandler(handler)
        logger.setLevel(level)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


class Payload:
    """Unpickling this runs ``touch MARKER``: the attack every loader must refuse."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def snapshot(root: str) -> dict:
    """{relative path: SHA-256, link target or 'dir'} of everything under ``root``: a folder compared before
    and after a command must be byte-identical."""
    out = {}
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            path = os.path.join(base, f)
            if os.path.islink(path):
                out[os.path.relpath(path, root)] = "link:" + os.readlink(path)
                continue
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), root) + "/"] = "dir"
    return out


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
