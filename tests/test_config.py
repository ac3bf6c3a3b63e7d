import pytest

from protoseg.config import ConfigError, load_config, parse_override


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  method: protoseg\n  protoseg:\n    num_prototypes: 5\ntrain:\n  lr: 1\n")
    cfg = load_config(
        path, ["train.iterations=7", "data.crop_size=[64, 32]", "model.backbone.pretrained=/x.pt"]
    )
    assert cfg.model.method == "protoseg"
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


def test_base_file_is_merged_under_the_config(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "train:\n  lr: 0.5\n  iterations: 9\nmodel:\n  decoder:\n    channels: 32\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\ntrain:\n  iterations: 3\nmodel:\n  method: protoseg\n")
    cfg = load_config(child)
    assert (cfg.train.lr, cfg.train.iterations) == (0.5, 3)  # mappings merged key by key
    assert cfg.model.decoder.channels == 32 and cfg.model.method == "protoseg"


def test_base_chains_and_missing_bases_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: c.yaml\n")
    with pytest.raises(ConfigError, match="one level only"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "d.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "d.yaml")


def test_shapes_configs_share_their_base():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "shapes"
    linear, protoseg = load_config(root / "linear.yaml"), load_config(root / "protoseg.yaml")
    assert linear.data == protoseg.data and linear.train == protoseg.train
    assert linear.model.backbone == protoseg.model.backbone


def test_old_keys_keep_loading_with_a_warning_that_says_what_to_write(tmp_path):
    from protoseg.config import ConfigKeyWarning

    path = tmp_path / "old.yaml"
    path.write_text("model:\n  head: protoseg\n  protoseg:\n    ppc_weight: 0.5\ntrain:\n  warmup_iters: 7\n")
    with pytest.warns(ConfigKeyWarning, match=r"model\.method: protoseg.*train\.lr_warmup_iters"):
        cfg = load_config(path)
    assert cfg.model.method == "protoseg" and cfg.model.protoseg.proto_contrast_weight == 0.5
    assert cfg.train.lr_warmup_iters == 7
    with pytest.warns(ConfigKeyWarning):
        assert load_config(None, ["model.contrast.warmup_iters=3"]).model.contrast.start_iter == 3
    wsss = tmp_path / "wsss.yaml"
    wsss.write_text("model:\n  head: linear\n  wsss: rca\n")
    with pytest.warns(ConfigKeyWarning):
        assert load_config(wsss).model.method == "rca"
    with pytest.raises(ConfigError, match="model.method=..."):
        load_config(None, ["model.head=protoseg"])
    both = tmp_path / "both.yaml"
    both.write_text("train:\n  warmup_iters: 1\n  lr_warmup_iters: 2\n")
    with pytest.raises(ConfigError, match="lr_warmup_iters only"):
        load_config(both)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iterations=0", r"train\.iterations' must be >= 1, got 0"),
        ("train.iterations=-5", r"train\.iterations' must be >= 1, got -5"),
        ("train.log_interval=0", r"train\.log_interval' must be >= 1"),
        ("train.device=tpu", r"train\.device' must match"),
        ("eval.scales=[]", r"eval\.scales' needs at least 1 value"),
        ("eval.scales=[-1.0]", r"eval\.scales' item 0: must be > 0"),
        ("model.method=segformer", r"model\.method' must be one of linear, protoseg"),
        ("model.protoseg.momentum=1.5", r"model\.protoseg\.momentum' must be in \[0.0, 1.0\], got 1.5"),
        ("data.crop_size=[64]", r"data\.crop_size' needs exactly 2 values"),
        ("data.scale_range=[2.0, 0.5]", r"low <= high"),
        ("eval.cam_threshold=1.5", r"eval\.cam_threshold' must be in \[0.0, 1.0\]"),
        ("train.lr=.nan", r"train\.lr' must be a finite number"),
    ],
)
def test_values_outside_their_range_name_the_key_the_range_and_the_override(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(None, [override])
    if "scale_range" not in override:
        assert f"from the override '{override}'" in str(error.value)


def test_an_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  iterations: 0\n")
    with pytest.raises(ConfigError, match=f"train.iterations.*in {path}"):
        load_config(path)
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
