import pytest

from mmsocial.config import (ConfigError, StrictModel, TrainConfig, apply_overrides, load_config,
                             parse_overrides, save_config)


class ModelConfig(StrictModel):
    dim: int = 8
    variant: str = "full"


class SystemConfig(StrictModel):
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()


def write(tmp_path, text, name="small.yaml"):
    path = tmp_path / "configs" / "dman" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_yaml_preset_loads_with_nested_defaults(tmp_path):
    path = write(tmp_path, "model: {dim: 16}\ntrain:\n  lr: 0.001\n  optimizer: adam\n"
                           "  early_stopping: {metric: mAP, patience: 3}\n")
    cfg = load_config(path, SystemConfig)
    assert cfg.model.dim == 16 and cfg.model.variant == "full"
    assert cfg.train.lr == 0.001 and cfg.train.optimizer == "adam" and cfg.train.epochs == 10
    assert cfg.train.early_stopping.metric == "mAP" and cfg.train.early_stopping.mode == "max"


def test_wrong_type_names_file_and_key_path(tmp_path):
    path = write(tmp_path, "train:\n  lr: fast\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, SystemConfig)
    assert str(e.value).startswith(f"{path}: train.lr: Input should be a valid number")


def test_unknown_key_and_bad_choice_are_all_reported(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.1\n  optimizer: rmsprop\n  early_stopping: {mode: up}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, SystemConfig)
    msg = str(e.value)
    assert f"{path}: train.learning_rate: unknown key" in msg
    assert f"{path}: train.optimizer: Input should be 'sgd', 'adam' or 'adamw'" in msg
    assert f"{path}: train.early_stopping.mode:" in msg


def test_overrides_dotted_strings_and_dict(tmp_path):
    path = write(tmp_path, "train: {lr: 0.01}\n")
    cfg = load_config(path, SystemConfig, ["train.lr=0.1", "train.nesterov=true", "train.momentum=0.9",
                                           "model.variant=no_att", "train.max_steps=null"])
    assert cfg.train.lr == 0.1 and cfg.train.nesterov is True and cfg.model.variant == "no_att"
    assert cfg.train.max_steps is None
    assert load_config({}, SystemConfig, {"train.early_stopping.patience": 20}).train.early_stopping.patience == 20
    with pytest.raises(ConfigError, match=r"--set train.epochs=many: train.epochs: Input should be a valid integer.*got .many."):
        load_config(path, SystemConfig, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.lr"])
    with pytest.raises(ConfigError, match="train.lr is a float, not a mapping"):
        apply_overrides({"train": {"lr": 0.1}}, {"train.lr.x": 1})


def test_cross_field_rule_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nesterov needs optimizer='sgd' and momentum > 0"):
        load_config({"nesterov": True}, TrainConfig)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", TrainConfig)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n", "list.yaml"), TrainConfig)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1,\n", "broken.yaml"), TrainConfig)


def test_save_and_load_round_trip(tmp_path):
    cfg = SystemConfig(train=TrainConfig(lr=0.5, betas=(0.8, 0.9), early_stopping={"metric": "mse", "mode": "min"}))
    again = load_config(save_config(cfg, tmp_path / "run" / "config.yaml"), SystemConfig)
    assert again == cfg
