"""Config loading: TOML → dataclasses, overrides, errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

import fewcore
from fewcore.config import Config, ConfigError, load_config, parse_override, parse_setting
from fewcore.engine import BuildError, build_dataset, build_learner
from fewcore.plugins.learners.maml import MAML
from fewcore.testing import random_episode

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.toml")) + [REPO / "fewcore" / "configs" / "demo.toml"]

MINIMAL = """
[dataset]
name = "glyphs"
alphabets = 10
[backbone]
name = "conv4"
[learner]
name = "protonet"
[train]
lr = 0.01
steps = 50
"""


def _write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_config_defaults_and_component_options(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.dataset.name == "glyphs" and config.dataset.options == {"alphabets": 10}
    assert config.sampler.name == "episodic" and config.sampler.options == {}
    assert config.train.lr == 0.01 and config.train.steps == 50 and config.train.optimizer == "adam"
    assert config.eval.episodes == 600 and config.eval.settings == ["5-way 1-shot", "5-way 5-shot"]
    assert config.run.dir == "runs/exp"  # named after the file


def test_overrides(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, MINIMAL),
        ["train.lr=0.001", "learner.distance=cosine", "dataset.alphabets=20", 'eval.settings=["20-way 1-shot"]',
         "train.device=cpu", "run.dir=/tmp/x"],
    )
    assert config.train.lr == 0.001
    assert config.learner.options == {"distance": "cosine"}
    assert config.dataset.options == {"alphabets": 20}
    assert config.eval.settings == ["20-way 1-shot"]
    assert config.train.device == "cpu" and config.run.dir == "/tmp/x"


def test_training_sampler_options_table(tmp_path: Path) -> None:
    text = MINIMAL + "[train.sampler_options]\naugment = true\n"
    assert load_config(_write(tmp_path, text)).train.sampler_options == {"augment": True}
    assert load_config(_write(tmp_path, MINIMAL), ["train.sampler_options.augment=true"]).train.sampler_options == {"augment": True}
    with pytest.raises(ConfigError, match="train.sampler_options must be"):
        load_config(_write(tmp_path, MINIMAL), ["train.sampler_options=3"])


def test_precision_and_memory_format_default_to_auto_and_take_their_values(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL))
    assert (config.train.precision, config.train.channels_last) == ("auto", "auto")
    assert (config.eval.precision, config.eval.channels_last) == ("auto", "auto")
    config = load_config(
        _write(tmp_path, MINIMAL),
        ["train.precision=fp16", "train.channels_last=false", "eval.precision=bf16", "eval.channels_last=true"],
    )
    assert (config.train.precision, config.train.channels_last) == ("fp16", False)
    assert (config.eval.precision, config.eval.channels_last) == ("bf16", True)


def test_int_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, MINIMAL), ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", r"unknown key train\.lrr.*valid: .*batch_size.*lr.*Did you mean 'lr'\?"),
        ("trian.lr=0.1", r"unknown section \[trian\].*valid: .*train.*Did you mean 'train'\?"),
        ("train.steps=many", r"train\.steps must be int, got 'many'"),
        ("train.steps=1.5", r"train\.steps must be int, got 1\.5"),
        ("train.steps=true", r"train\.steps must be int"),
        ("train.steps=0", r"train\.steps must be at least 1, got 0"),
        ("train.optimizer=rmsprop", r"train\.optimizer must be one of adam, adamw, sgd; got 'rmsprop'"),
        ("train.device=tpu", r"train\.device must be auto, cpu, cuda or cuda:N"),
        ('eval.settings=["five way"]', r"cannot read the way/shot setting 'five way'"),
        ("eval.settings=[]", r"eval\.settings must name at least one setting"),
        ("learner.name=3", r"learner\.name must be a string"),
        ("train.precision=fp8", r"train\.precision must be one of auto, fp32, bf16, fp16; got 'fp8'"),
        ("eval.precision=half", r"eval\.precision must be one of auto, fp32, bf16, fp16; got 'half'"),
        ("train.channels_last=yes", r"train\.channels_last must be true, false or \"auto\"; got 'yes'"),
        ("eval.channels_last=1", r"eval\.channels_last must be bool or str, got 1 \(int\)"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, MINIMAL), [override])


def test_missing_component_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[learner\] needs a name"):
        load_config(_write(tmp_path, MINIMAL.replace('name = "protonet"', "")))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[train\nlr = "))


def test_override_syntax() -> None:
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("learner.metric=cosine") == (["learner", "metric"], "cosine")
    assert parse_override('dataset.fractions=[0.5, 0.25, 0.25]') == (["dataset", "fractions"], [0.5, 0.25, 0.25])
    for bad in ("train.lr", "lr=0.1", "=3", "train..lr=1"):
        with pytest.raises(ConfigError):
            parse_override(bad)


def test_parse_setting() -> None:
    assert parse_setting("5-way 1-shot") == (5, 1)
    assert parse_setting("20way 5shot") == (20, 5)
    assert parse_setting("5-Way, 5-Shot") == (5, 5)
    with pytest.raises(ConfigError):
        parse_setting("0-way 1-shot")


def test_round_trip_through_plain_data(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), ["learner.distance=cosine"])
    assert Config.from_dict(config.to_dict()) == config


def test_configs_directory_has_a_config_per_learner_and_dataset() -> None:
    names = {path.stem for path in CONFIGS}
    assert "demo" in names
    # Built-in learners; third-party ones (such as the example plugin's) bring their own configs.
    learners = {c.name for c in fewcore.registry().components() if c.kind == "learner" and c.plugin.distribution == "fewcore"}
    for dataset in ("glyphs", "omniglot"):
        if dataset not in fewcore.list_components("dataset"):
            continue
        for learner in learners:
            assert f"{learner}_{dataset}" in names, f"configs/{learner}_{dataset}.toml is missing"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_builds_its_learner(path: Path) -> None:
    config = load_config(path)
    for kind in ("dataset", "sampler", "backbone", "learner"):
        name = getattr(config, kind).name
        assert name in fewcore.list_components(kind), f"{path.name}: {kind} {name!r} is not registered"
    # The backbone and learner options are accepted by their factories (datasets are built by
    # the end-to-end tests: some need data on disk).
    assert isinstance(build_learner(config), fewcore.Learner)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_learner_classifies_each_setting_the_config_asks_for(path: Path) -> None:
    # Learners with a fixed number of outputs (MAML, Meta-SGD, MANN) reject wider episodes; a
    # config must ask its learner only for settings it can classify, or training / evaluation
    # (benchmarks/accuracy.py evaluates eval.settings) fails after the training time is spent.
    config = load_config(path)
    # 28: the image datasets' default. At most 32: which settings a learner classifies does not
    # depend on the image size, and ResNet-12 on 84x84 images takes ~10 s per setting on a CPU.
    side = min(config.dataset.options.get("image_size", 28), 32)
    learner = build_learner(config, (1, side, side)).eval()
    settings = {f"{config.train.n_way}-way {config.train.k_shot}-shot", config.val.setting, *config.eval.settings}
    for text in sorted(settings):
        n_way, k_shot = parse_setting(text)
        episode = random_episode((1, side, side), n_way=n_way, k_shot=k_shot, q_query=1, batch_size=1)
        scores = learner.predict(episode.support_x, episode.support_y, episode.query_x)
        assert scores.shape == (1, n_way, n_way), f"{path.name}: {text}"


def test_the_dataset_item_shape_reaches_backbone_and_learner_and_a_config_may_not_repeat_it() -> None:
    config = load_config(REPO / "configs" / "maml_omniglot.toml")  # Conv4 + MAML, no shape in the config
    for side, embedding in ((32, 64 * 2 * 2), (28, 64 * 1 * 1)):
        learner = build_learner(config, item_shape=(1, side, side))
        assert learner.model.head.in_features == embedding  # the head is sized from the items
    rgb = build_learner(config, item_shape=(3, 32, 32))
    assert rgb.backbone.in_channels == 3  # the backbone's input layer too
    config.learner.options["item_shape"] = [1, 32, 32]
    with pytest.raises(BuildError, match=r"\[learner\] item_shape is set by fewcore .* remove learner.item_shape"):
        build_learner(config, item_shape=(1, 32, 32))


@pytest.mark.omniglot
def test_classic_5_way_5_shot_config_trains_and_tests_on_28x28_omniglot(omniglot_dir: Path, tmp_path: Path) -> None:
    config = load_config(
        REPO / "configs" / "protonet_omniglot_5w5s.toml",
        [
            f'dataset.train.root="{omniglot_dir / "images_background_small1.zip"}"',
            f'dataset.test.root="{omniglot_dir / "images_background_small2.zip"}"',
            f'dataset.cache_dir="{tmp_path}"',
        ],
    )
    assert (config.train.k_shot, config.val.setting, config.eval.settings) == (5, "5-way 5-shot", ["5-way 5-shot"])
    dataset = build_dataset(config)
    assert tuple(dataset.item_shape) == (1, 28, 28)
    assert len(dataset.classes("test")) >= 5


def test_maml_python_default_inner_lr_is_the_one_the_omniglot_configs_use() -> None:
    config = load_config(REPO / "configs" / "maml_omniglot.toml")
    learner = build_learner(config, (1, 32, 32))
    assert isinstance(learner, MAML) and learner.inner_lr == config.learner.options["inner_lr"] == 0.1
    del config.learner.options["inner_lr"]
    assert build_learner(config, (1, 32, 32)).inner_lr == 0.1  # what the Python API gives when not told
