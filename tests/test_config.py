import dataclasses
import os

import pytest
import yaml

from mmkgc_dist.errors import ConfigError
from mmkgc_dist.config import Config, config_yaml, load_config, parse_overrides, resumed_config, to_dict


def test_defaults_equal_default_recipe(repo):
    assert to_dict(load_config(os.path.join(repo, "configs", "default.yaml"))) == to_dict(Config().validate())


@pytest.mark.parametrize("name", ["db15k.yaml", "mkgw.yaml"])
def test_recipes_load_with_paper_hyperparameters(repo, name):
    cfg = load_config(os.path.join(repo, "configs", name))
    assert (cfg.train.batch_size, cfg.train.num_negatives, cfg.model.gamma) == (1024, 128, 12.0)
    assert cfg.model.dim == (250 if name == "db15k.yaml" else 200)
    assert cfg.mat.mu > 0


def test_dotted_overrides_and_types():
    cfg = load_config(None, parse_overrides(["--train.lr=1e-3", "--model.dim", "32", "--model.modalities=[text]"]))
    assert cfg.train.lr == 1e-3 and cfg.model.dim == 32 and cfg.model.modalities == ["text"]


def test_every_field_has_help():
    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
                walk(f.type)
    walk(Config)


@pytest.mark.parametrize("override, message", [
    (("train.lrr", "1"), "train.lrr: unknown key"),
    (("train.batch_size", "big"), "train.batch_size: expected int"),
    (("train.batch_size", "0"), "train.batch_size: must be > 0"),
    (("train.negatives", "every"), "train.negatives: expected one of"),
    (("model.modalities", "[audio]"), "unknown modality 'audio'"),
    (("data.source", "parquet"), "data.path: required"),
    (("data.synthetic.visual_missing", "1.5"), "must be in [0, 1]"),
    (("train.label_smoothing", "1.0"), "must be in [0, 1)"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_structure_only_with_mat_is_rejected():
    with pytest.raises(ConfigError, match="mat.enabled"):
        load_config(None, [("model.modalities", "[]")])


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, [("train.lr", "0.01")])
    (tmp_path / "c.yaml").write_text(config_yaml(cfg))
    assert load_config(str(tmp_path / "c.yaml")) == cfg
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train"]["lr"] == 0.01


def test_resume_changes_only_what_does_not_shape_the_model():
    created = load_config(None, [("model.dim", "16")])
    longer = load_config(None, [("model.dim", "16"), ("train.epochs", "40"), ("eval.every_epochs", "2")])
    assert resumed_config(created, longer) == longer
    with pytest.raises(ConfigError, match=r"model.dim: 16 -> 64.*train.lr"):
        resumed_config(created, load_config(None, [("train.lr", "0.5")]))


def test_duplicate_keys_in_a_config_file_are_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*'lr' given twice \(first on line 2\).*line 4"):
        load_config(str(tmp_path / "c.yaml"))
