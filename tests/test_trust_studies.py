"""Trust, third pass — studies: a study folder is bound to one study in one storage; storage faults are one line;
the search space means what it says (conditions in any order, scalar choices only, a worker whose every trial
failed exits non-zero). The binding cases run no trial: they open the study as a worker does."""
import os

import pytest

optuna = pytest.importorskip("optuna")

from mmkgc_dist.config import load_config  # noqa: E402
from mmkgc_dist.errors import ConfigError, TrialsFailed  # noqa: E402
from mmkgc_dist.tuning.space import parse_space, sample  # noqa: E402
from mmkgc_dist.tuning.study import TuneOptions, open_worker_study  # noqa: E402

SPACE = parse_space({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
BASE = load_config(None, [("model.dim", "8")])


def open_study(folder, **options):
    """What a worker does before its first trial: check the folder, open the storage, bind or re-open."""
    return open_worker_study(str(folder), SPACE, BASE, TuneOptions.of(**options))[1]


def refused(match, folder, **options):
    with pytest.raises(ConfigError) as err:
        open_study(folder, **options)
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message
    assert match in message, message
    return message


def test_a_study_folder_is_bound_to_one_study(tmp_path):
    # the default SQLite file, lost or emptied: the folder no longer continues (nor recreates) its study
    study = open_study(tmp_path / "a")
    study.enqueue_trial({"train.lr": 1e-3})
    assert len(open_study(tmp_path / "a").get_trials()) == 2                  # re-opened: the same study
    (tmp_path / "a" / "trials" / "0").mkdir()
    os.remove(tmp_path / "a" / "study.db")
    refused("holds no study 'a'", tmp_path / "a")
    open(tmp_path / "a" / "study.db", "w").close()                           # emptied
    refused("holds no study 'a'", tmp_path / "a")

    # a journal file elsewhere with the same base name is another storage
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    open_study(tmp_path / "j", storage=f"journal:{tmp_path}/x/study.journal")
    refused("created with storage journal: ", tmp_path / "j", storage=f"journal:{tmp_path}/y/study.journal")
    # another study name
    refused("created with study name 'j', not 'other'", tmp_path / "j",
            storage=f"journal:{tmp_path}/x/study.journal", study_name="other")
    # the storage replaced by another study of the same name (recreated): another study id
    os.remove(tmp_path / "x" / "study.journal")
    optuna.create_study(study_name="j", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(f"{tmp_path}/x/study.journal")))
    refused("is another study than the one", tmp_path / "j", storage=f"journal:{tmp_path}/x/study.journal")

    # a new folder whose name the storage already holds for another folder's study
    shared = f"sqlite:///{tmp_path}/shared.db"
    open_study(tmp_path / "p" / "s", storage=shared)
    refused("already holds a study named 's'", tmp_path / "q" / "s", storage=shared)
    open_study(tmp_path / "q" / "s", storage=shared, study_name="s2")          # with its own name: fine

    # storages that do not persist are refused; nothing is bound by a storage that fails to open
    for url in ("sqlite://", "sqlite:///:memory:"):
        refused("in-memory database does not persist", tmp_path / "m", storage=url)
    assert not (tmp_path / "m").exists()
    refused("cannot be used", tmp_path / "n", storage="nosuchdb://host/x")
    assert not (tmp_path / "n" / "study.yaml").exists()
    assert open_study(tmp_path / "n").study_name == "n"                          # the corrected command works

    # a storage older than the folder (restored from a copy) would hand out used trial numbers
    open_study(tmp_path / "old")
    (tmp_path / "old" / "trials" / "3").mkdir()
    refused("trials/3 is not a trial of its storage's study", tmp_path / "old")


def test_storage_faults_are_one_line(tmp_path):
    # a damaged SQLite file
    (tmp_path / "d").mkdir()
    (tmp_path / "bad.db").write_bytes(b"\x00garbage" * 100)
    refused("is not an SQLite database", tmp_path / "d", storage=f"sqlite:///{tmp_path}/bad.db")
    good = tmp_path / "good.db"
    open_study(tmp_path / "g", storage=f"sqlite:///{good}")
    with open(good, "r+b") as fh:                                     # a valid header, damaged pages
        fh.seek(100)
        fh.write(os.urandom(3000))
    refused("--storage", tmp_path / "g", storage=f"sqlite:///{good}")
    # a missing driver, an unreachable server's URL without its driver, a folder that does not exist
    refused("its database driver is not installed (psycopg2); pip install psycopg2-binary", tmp_path / "e",
            storage="postgresql+psycopg2://user:secret@localhost/db")
    msg = refused("--storage", tmp_path / "e", storage="mysql+pymysql://user:secret@localhost:1/db")
    assert "secret" not in msg
    refused("does not exist", tmp_path / "e", storage=f"sqlite:///{tmp_path}/nowhere/x.db")

    # a journal: a torn last record (a full disk cut the write) is cut off and the study goes on
    journal = tmp_path / "study.journal"
    study = open_study(tmp_path / "t", storage=f"journal:{journal}")
    study.enqueue_trial({"train.lr": 2e-3})
    size = journal.stat().st_size
    with open(journal, "ab") as fh:
        fh.write(b'{"op_code": 5, "worker_id": "w", "trial_id"')
    study = open_study(tmp_path / "t", storage=f"journal:{journal}")
    assert journal.stat().st_size == size and len(study.get_trials()) == 2
    study.enqueue_trial({"train.lr": 4e-3})                      # appends after the cut: still readable
    assert len(open_study(tmp_path / "t", storage=f"journal:{journal}").get_trials()) == 3
    # ... garbage inside is refused, naming the line
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join([lines[0], b"not json at all", *lines[1:]]))
    refused("line 2 of", tmp_path / "t", storage=f"journal:{journal}")


def test_the_search_space_means_what_it_says(tmp_path):
    # a condition naming a key written later in the file is honoured
    params = parse_space({"model.regularizer_weight": {"type": "float", "low": 1e-4, "high": 0.1, "log": True,
                                                       "when": {"model.regularizer": ["n3"]}},
                          "model.regularizer": ["none", "n3"]})
    assert [p.key for p in params] == ["model.regularizer", "model.regularizer_weight"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    values = [sample(study.ask(), params, BASE) for _ in range(30)]
    assert any("model.regularizer_weight" in v for v in values)
    assert all(("model.regularizer_weight" in v) == (v["model.regularizer"] == "n3") for v in values)
    # conditions that name each other, and choices that are not single values, are refused before any trial
    for space, message in (
            ({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "when": {"model.dim": [8]}},
              "model.dim": {"type": "int", "low": 4, "high": 8, "when": {"train.lr": [1e-3]}}}, "form a cycle"),
            ({"model.dim": [[8, 16], [32]]}, "[8, 16] is a list; each choice must be a single value"),
            ({"model.dim": [8, {"a": 1}]}, "is a dict"),
            ({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "when": {"model.dim": [[8]]}}},
             "is not a single value")):
        with pytest.raises(ConfigError, match=None) as err:
            parse_space(space)
        assert message in str(err.value), (space, str(err.value))

    # a worker whose every trial failed exits non-zero with the reasons counted
    import mmkgc_dist
    with pytest.raises(TrialsFailed, match=r"every trial of this worker failed \(2\): 2x .*nowhere"):
        mmkgc_dist.tune({"train.lr": [1e-3, 2e-3]}, str(tmp_path / "f"), trials=2, pruner="none",
                        overrides={"data.source": "parquet", "data.path": str(tmp_path / "nowhere")},
                        show_progress=False)
    assert "fail" in (tmp_path / "f" / "summary.md").read_text()
