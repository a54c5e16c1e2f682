""" "Did you mean" for a mistyped override (rectnet/hints.py): the intended key or option, written here by hand;
every suggestion must compose, and a word that is fine, or has nothing close, gets none."""

from __future__ import annotations

import pytest
from helpers import compose_train, run_cli
from omegaconf import OmegaConf

from rectnet.config import ConfigError, to_settings
from rectnet.engine.eval_command import eval_settings
from rectnet.hints import group_options, suggestion, suggestions

MISTYPED = {
    "trainer.epoch=3": "trainer.epochs=3",
    "model.widht=0.5": "model.width=0.5",
    "optim.momentom=0.8": "optim.momentum=0.8",
    "sed=3": "seed=3",
    "activaton=prelu": "activation=prelu",
    "activation=prelo": "activation=prelu",
    "activation=relu,prelo": "activation=relu,prelu",
    "experiment=convpool_crelo": "experiment=convpool_crelu",
    "dataset=cifar100x": "dataset=cifar100",
}


@pytest.mark.parametrize(("word", "meant"), MISTYPED.items())
def test_a_mistyped_word_gets_the_intended_one_and_that_composes(word, meant):
    assert suggestion(word) == meant
    key, options = meant.split("=")
    for option in options.split(","):
        compose_train([f"{key}={option}"])  # the suggestion is a valid override


@pytest.mark.parametrize(
    "word",
    [
        "trainer.epochs=3",  # fine
        "activation=prelu",
        "experiment=null",
        "dataset.root=data",
        "model.kwargs.channels=[8,16]",  # a dict-typed field takes any key below it
        "optim.learning_rate=0.1",  # unknown, but nothing close (the key is lr)
        "+trainer.epoch=3",  # composes; the schema check names the close key (below)
        "~logger",
        "hydra.run.dir=/tmp/x",
        "-m",
        "seed=3",
    ],
)
def test_a_fine_word_or_one_with_nothing_close_gets_no_suggestion(word):
    assert suggestion(word) is None


def test_groups_list_their_options_and_hydra_and_keys_are_not_groups():
    assert {"relu", "prelu", "crelu", "avr"} <= set(group_options("activation"))
    assert group_options("hydra") is None and group_options("seed") is None


def test_train_py_prints_the_hint_under_hydras_error_and_exits_non_zero():
    done = run_cli(["trainer.epoch=3", "dataset=synthetic"])
    assert done.returncode != 0
    assert "Key 'epoch' not in 'TrainerConfig'" in done.stderr  # Hydra's error stays
    assert done.stderr.strip().splitlines()[-1] == "hint: did you mean trainer.epochs=3 (not trainer.epoch=3)"
    assert suggestions(["trainer.epochs=3", "dataset=synthetic"]) == []  # a good command line: nothing added


def test_an_added_unknown_key_and_an_eval_override_name_the_close_key():
    with pytest.raises(ConfigError, match=r"unknown config key trainer\.epoch; did you mean trainer\.epochs\?"):
        to_settings(compose_train(["+trainer.epoch=3"]))
    saved = compose_train([])
    with pytest.raises(ConfigError, match=r"did you mean eval\.protocol=dense \(not eval\.protocl=dense\)"):
        eval_settings(OmegaConf.to_container(saved), ["eval.protocl=dense"])
