"""Every option of every config group composes and validates; bad values fail with the key named."""

from __future__ import annotations

import pytest
from helpers import CONFIGS, compose_train
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from rectnet.config import ConfigError, to_settings

GROUPS = ["dataset", "model", "activation", "init", "optim", "schedule", "trainer", "logger", "recipe", "experiment"]


def _options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in GROUPS for path in sorted((CONFIGS / group).glob("*.yaml"))]


def test_every_config_group_has_options():
    groups = {group for group, _ in _options()}
    assert groups == set(GROUPS)


@pytest.mark.parametrize("group,option", _options())
def test_each_option_composes_and_validates(group, option):
    if (group, option) == ("model", "timm"):  # it names itself, and a run needs an architecture instead
        with pytest.raises(ConfigError, match="model=timm needs an architecture"):
            to_settings(compose_train(["model=timm"]))
        assert to_settings(compose_train(["model=timm", "model.name=resnet18"])).model.source == "timm"
        return
    if (group, option) == ("activation", "custom"):  # the user names the activation: a run needs its target
        with pytest.raises(ConfigError, match="activation=custom needs activation.target"):
            to_settings(compose_train(["activation=custom"]))
        settings = to_settings(compose_train(["activation=custom", "activation.target=torch.nn.SiLU"]))
        assert settings.activation.target == "torch.nn.SiLU"
        return
    settings = to_settings(compose_train([f"{group}={option}"]))
    if group not in ("trainer", "logger", "recipe", "experiment"):
        assert getattr(settings, group).name == option  # each option file names itself


def test_the_readmes_override_keys_exist():
    cfg = compose_train(["trainer.epochs=3", "dataset.root=/data/x", "seed=7", "activation=prelu", "init=kaiming"])
    settings = to_settings(cfg)
    assert (settings.trainer.epochs, settings.dataset.root, settings.seed) == (3, "/data/x", 7)
    assert settings.activation.name == "prelu" and settings.activation.slope == 0.25


def test_dataset_root_defaults_to_env_then_data(monkeypatch):
    monkeypatch.delenv("RECTNET_DATA", raising=False)
    assert to_settings(compose_train([])).dataset.root == "./data"
    monkeypatch.setenv("RECTNET_DATA", "/srv/datasets")
    assert to_settings(compose_train([])).dataset.root == "/srv/datasets"


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["optim.lr=abc"])
    assert isinstance(err.value.__cause__, ValidationError) and "optim.lr" in str(err.value.__cause__)


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["optim.learning_rate=0.1"])
    assert "Key 'learning_rate' not in 'OptimConfig'" in str(err.value.__cause__)


def test_appending_an_unknown_key_fails_too():
    with pytest.raises(ConfigError, match="unknown config key optim.learning_rate"):
        to_settings(compose_train(["+optim.learning_rate=0.1"]))
    with pytest.raises(ConfigError, match="unknown config key colour"):
        to_settings(compose_train(["+colour=blue"]))


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(ConfigCompositionException, match="Available options"):
        compose_train(["activation=swish"])


@pytest.mark.parametrize(
    "override,key",
    [
        ("optim.lr=-0.1", "optim.lr"),
        ("trainer.epochs=-1", "trainer.epochs"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("optim.momentum=1.5", "optim.momentum"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("init.mode=fan_sideways", "init.mode"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("model.width=0", "model.width"),
        ("schedule.gamma=2", "schedule.gamma"),
    ],
)
def test_out_of_range_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        to_settings(compose_train([override]))
