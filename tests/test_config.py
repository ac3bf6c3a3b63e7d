import pytest

from protoseg.config import ConfigError, load_config, parse_override


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  head: protoseg\n  protoseg:\n    num_prototypes: 5\ntrain:\n  lr: 1\n")
    cfg = load_config(
        path, ["train.iterations=7", "data.crop_size=[64, 32]", "model.backbone.pretrained=/x.pt"]
    )
    assert cfg.model.head == "protoseg"
    assert cfg.model.protoseg.num_prototypes == 5
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.iterations == 7
    assert cfg.data.crop_size == [64, 32]
    assert cfg.model.backbone.pretrained == "/x.pt"


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  iteratons: 5\n")
    with pytest.raises(ConfigError, match="train.iteratons"):
        load_config(path)
    with pytest.raises(ConfigError, match="model.protoseg.nope"):
        load_config(None, ["model.protoseg.nope=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.iterations"):
        load_config(None, ["train.iterations=abc"])
    with pytest.raises(ConfigError, match="data.flip"):
        load_config(None, ["data.flip=3"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.iterations")


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml"))
    assert configs, "no configs shipped"
    for path in configs:
        load_config(path)
