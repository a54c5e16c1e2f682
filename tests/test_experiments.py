"""Every experiment (configs/experiment/) is its family's recipe (configs/recipe/) plus what its table row
changes, composes exactly as committed, and trains one step at a tiny size; every recipe pins what its paper
states; every reproduction script (scripts/reproduce/) launches its table's grid, and re-running one skips what
has finished.

What the papers state is written here from the papers (section or table named at each), not read back from the
yaml files; what a recipe chose where its paper is silent is read from configs/recipe/<name>.yaml.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from helpers import CONFIGS, ROOT, compose_train, make_image_folder
from omegaconf import OmegaConf

from rectnet.config import ConfigError, to_settings
from rectnet.engine.train import run
from rectnet.results.papers import paper_tables
from rectnet.results.variants import variant_from_config

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
RECIPES = sorted(p.stem for p in (CONFIGS / "recipe").glob("*.yaml"))
SNAPSHOT = ROOT / "tests" / "snapshots" / "experiments.json"

# --------------------------------------------------------------------------------------- what the papers state

# He et al. 2015 §3: large models. ImageNet, 224 crops of shorter side s ~ U[256, 512], flips, colour altering
# (AlexNet's lighting), SGD momentum 0.9, weight decay 5e-4 (none on PReLU slopes, §2.1), mini-batch 128, lr 1e-2
# divided by 10 twice, ~80 epochs, dropout 0.5 on fc1/fc2, Eq. 14 (fan_out) init.
HE_LARGE_STATED = {
    "dataset.name": "imagenet",
    "dataset.image_size": 224,
    "dataset.num_classes": 1000,
    "dataset.scale_min": 256,
    "dataset.scale_max": 512,
    "dataset.flip": True,
    "dataset.lighting_std": 0.1,
    "optim.lr": 0.01,
    "optim.momentum": 0.9,
    "optim.weight_decay": 0.0005,
    "optim.decay_slopes": False,
    "schedule.gamma": 0.1,
    "trainer.epochs": 80,
    "trainer.batch_size": 128,  # the mini-batch of one SGD step, "not increased for multi-GPU" (§3)
    "trainer.batch_scope": "global",
    "model.dropout": 0.5,
    "init.name": "kaiming",
    "init.mode": "fan_out",
}
STATED = {
    "he_large": HE_LARGE_STATED,
    # He et al. Table 2: the 14-layer model, 75 epochs, shorter side 256 for training and testing
    "he_small": {**HE_LARGE_STATED, "dataset.scale_max": 256, "trainer.epochs": 75},
    # Shang et al. 2016 §3.1: CIFAR, per-channel mean/std, flips only; ConvPool-CNN-C (Springenberg et al. 2014)
    "convpool": {
        "dataset.name": "cifar10",
        "dataset.flip": True,
        "dataset.crop_padding": 0,
        "dataset.normalize": True,
        "model.name": "convpool_cnn_c",
    },
    # Shang et al. §3.1: VGG "follow[s] the training procedure in Zagoruyko (2015)": flips and random shifts,
    # mean/std; Zagoruyko's train.lua: momentum 0.9, wd 5e-4, batch 128, lr halved every 25 epochs, 300 epochs,
    # MSR init fan_out (its lr 1 is dampened: PyTorch's 0.1)
    "vgg_cifar": {
        "dataset.name": "cifar10",
        "dataset.flip": True,
        "dataset.normalize": True,
        "model.name": "vgg_cifar",
        "optim.lr": 0.1,
        "optim.momentum": 0.9,
        "optim.weight_decay": 0.0005,
        "schedule.name": "step",
        "schedule.step_size": 25,
        "schedule.gamma": 0.5,
        "trainer.epochs": 300,
        "trainer.batch_size": 128,
        "trainer.batch_scope": "global",
        "init.name": "kaiming",
        "init.mode": "fan_out",
    },
    # Shang et al. §3.2: ImageNet, mean/std per channel (not a mean image), AlexNet augmentation (crops, flips,
    # PCA lighting); tested on the centre crop and 10 patches
    "allcnn_b": {
        "dataset.name": "imagenet",
        "dataset.image_size": 224,
        "dataset.num_classes": 1000,
        "dataset.per_pixel_mean": False,
        "dataset.normalize": True,
        "dataset.flip": True,
        "dataset.lighting_std": 0.1,
        "model.name": "allcnn_b",
    },
}
# Every He et al. recipe lets the fc layers follow the init (the paper's fc stds belong to unscaled input,
# docs/recipes.md): the model configs' init_std stays empty.
FC_UNDER_INIT = {"model.init_std": {}}
# Glorot & Bengio's init as He et al. §2.2 compares it, with Caffe's uniform filler
XAVIER = {"init.name": "xavier", "init.mode": "fan_in", "init.distribution": "uniform"}
UP_TO = {n: list(range(1, n + 1)) for n in (4, 7, 9, 12)}


def _crelu_at(layers: list[int]) -> dict:
    """Shang et al. Tables 2 and 4: CReLU after these layers, their filters halved."""
    return {"activation.name": "crelu", "model.act_at": layers, "model.halve_at": layers}


# experiment -> (its recipe, what its table row changes)
CHANGES: dict[str, tuple[str | None, dict]] = {
    # He et al. Table 2: ReLU / PReLU channel-shared / channel-wise (a_i = 0.25, §2.1); §2.2's Xavier row
    "small14_relu": ("he_small", {**FC_UNDER_INIT, "model.name": "prelu_small14", "activation.name": "relu"}),
    "small14_relu_xavier": ("he_small", {**FC_UNDER_INIT, **XAVIER, "model.name": "prelu_small14"}),
    "small14_prelu_shared": (
        "he_small",
        {**FC_UNDER_INIT, "model.name": "prelu_small14", "activation.name": "prelu_shared", "activation.slope": 0.25},
    ),
    "small14_prelu": (
        "he_small",
        {**FC_UNDER_INIT, "model.name": "prelu_small14", "activation.name": "prelu", "activation.slope": 0.25},
    ),
    # Tables 4-6: A ReLU / A, B, C PReLU; B and C with ReLU are controls without a paper row
    **{
        f"prelu_{m}_{act}": ("he_large", {**FC_UNDER_INIT, "model.name": f"prelu_{m}", "activation.name": act})
        for m in "abc"
        for act in ("relu", "prelu")
    },
    # Fig. 2: model B, ReLU, ours (Eq. 14) vs Xavier, top-1 on 3,000 validation images per epoch, ~3 epochs
    "fig2_b_kaiming": ("he_large", {"dataset.num_test": 3000, "trainer.epochs": 3, "model.name": "prelu_b"}),
    "fig2_b_xavier": ("he_large", {"dataset.num_test": 3000, "trainer.epochs": 3, "model.name": "prelu_b", **XAVIER}),
    # Fig. 3: 30-layer, ReLU, ours (Eq. 10 here) vs Xavier, epochs 0-9
    "fig3_plain30_kaiming": (
        "he_small",
        {"dataset.num_test": 3000, "trainer.epochs": 9, "model.name": "prelu_plain30", "init.mode": "fan_in"},
    ),
    "fig3_plain30_xavier": (
        "he_small",
        {"dataset.num_test": 3000, "trainer.epochs": 9, "model.name": "prelu_plain30", **XAVIER},
    ),
    # CReLU Table 1: baseline, double (width 2), AVR, CReLU (same filters), half (CReLU, width 0.5)
    "convpool_baseline": ("convpool", {"activation.name": "relu", "model.width": 1.0}),
    "convpool_double": ("convpool", {"activation.name": "relu", "model.width": 2.0}),
    "convpool_avr": ("convpool", {"activation.name": "avr", "model.width": 1.0, "model.dropout": 0.1}),
    "convpool_prelu": ("convpool", {"activation.name": "prelu", "activation.slope": 0.25, "model.width": 1.0}),
    "convpool_crelu": ("convpool", {"activation.name": "crelu", "model.width": 1.0}),
    "convpool_crelu_half": ("convpool", {"activation.name": "crelu", "model.width": 0.5}),
    # CReLU Table 2: CReLU at conv1 / 1,3 / 1,3,5 with those layers halved
    "vgg_cifar_baseline": ("vgg_cifar", {"activation.name": "relu", "model.act_at": None, "model.halve_at": []}),
    "vgg_cifar_crelu1": ("vgg_cifar", _crelu_at([1])),
    "vgg_cifar_crelu13": ("vgg_cifar", _crelu_at([1, 3])),
    "vgg_cifar_crelu135": ("vgg_cifar", _crelu_at([1, 3, 5])),
    # CReLU Table 4: All-CNN-B and its AVR / CReLU placements
    "allcnn_b_baseline": ("allcnn_b", {"activation.name": "relu", "model.halve_at": []}),
    **{
        f"allcnn_b_{act}1_{n}": ("allcnn_b", {"activation.name": act, "model.act_at": UP_TO[n], "model.halve_at": []})
        for act in ("avr", "crelu")
        for n in (4, 7, 9)
    },
    "allcnn_b_crelu147": ("allcnn_b", _crelu_at([1, 4, 7])),
    "allcnn_b_crelu_all": (
        "allcnn_b",
        {"activation.name": "crelu", "model.act_at": None, "model.halve_at": UP_TO[12]},
    ),
    # not a paper recipe: the offline smoke run (README)
    "quickstart": (None, {"dataset.name": "synthetic", "model.name": "convpool_cnn_c", "trainer.epochs": 6}),
}


def _get(settings, dotted: str):
    value = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _dotted(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            keys += _dotted(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _recipe_keys(recipe: str) -> set[str]:
    """The keys configs/recipe/<recipe>.yaml sets, the groups it selects (as <group>.name) and those of a recipe
    it builds on."""
    text = OmegaConf.to_container(OmegaConf.load(CONFIGS / "recipe" / f"{recipe}.yaml"))
    keys = set(_dotted({k: v for k, v in text.items() if k != "defaults"}))
    for entry in text.get("defaults", []):
        if isinstance(entry, dict):  # override /<group>: <option>
            keys |= {f"{group.split('/')[-1]}.name" for group in entry}
        elif entry != "_self_":  # another recipe
            keys |= _recipe_keys(entry)
    return keys


@cache
def recipe_values(recipe: str) -> dict:
    """What `recipe=<recipe>` pins: each key the recipe sets, with the value it composes to."""
    settings = to_settings(compose_train([f"recipe={recipe}"]))
    return {key: _get(settings, key) for key in _recipe_keys(recipe)}


def expected(name: str) -> dict:
    """The experiment's recipe with its row's changes."""
    recipe, row = CHANGES[name]
    return {**(recipe_values(recipe) if recipe else {}), **row}


def test_every_experiment_has_expectations():
    assert set(CHANGES) == set(EXPERIMENTS)
    assert {recipe for recipe, _ in CHANGES.values() if recipe} == set(RECIPES) == set(STATED)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_pins_what_its_paper_states(recipe):
    settings = to_settings(compose_train([f"recipe={recipe}"]))
    wrong = {key: (_get(settings, key), want) for key, want in STATED[recipe].items() if _get(settings, key) != want}
    assert not wrong, f"recipe={recipe}: key -> (composed, stated): {wrong}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_is_its_recipe_with_its_rows_changes(name):
    settings = to_settings(compose_train([f"experiment={name}"]))
    want = expected(name)
    wrong = {key: (_get(settings, key), value) for key, value in want.items() if _get(settings, key) != value}
    assert not wrong, f"experiment={name}: key -> (composed, expected): {wrong}"


def _composed(name: str) -> dict:
    return OmegaConf.to_container(compose_train([f"experiment={name}"], "/run_dir"), resolve=False)


def test_every_experiment_composes_as_committed():
    """The whole composed config of every experiment, against tests/snapshots/experiments.json: a recipe edit
    shows here as the rows it changes. After an intended change, RECTNET_UPDATE_SNAPSHOT=1 rewrites the file."""
    composed = {name: _composed(name) for name in EXPERIMENTS}
    if os.environ.get("RECTNET_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(composed, indent=1, sort_keys=True) + "\n")
    committed = json.loads(SNAPSHOT.read_text())
    assert sorted(committed) == EXPERIMENTS
    changed = {name for name in EXPERIMENTS if composed[name] != committed[name]}
    assert not changed, f"composed differently from {SNAPSHOT.name}: {sorted(changed)}"


# The table rows each recipe's runs fill, by rectnet.results' own grouping (variant and init of the saved config).
ROWS = {
    "small14_relu": {"prelu_table2:ReLU"},
    "small14_relu_xavier": {"prelu_table2:ReLU, Xavier init (§2.2)"},
    "small14_prelu_shared": {"prelu_table2:PReLU, channel-shared"},
    "small14_prelu": {"prelu_table2:PReLU, channel-wise"},
    "prelu_a_relu": {"prelu_table4:ReLU", "prelu_table5:A, ReLU", "prelu_table6:A, ReLU"},
    "prelu_a_prelu": {"prelu_table4:PReLU", "prelu_table5:A, PReLU", "prelu_table6:A, PReLU"},
    "prelu_b_prelu": {"prelu_table5:B, PReLU", "prelu_table6:B, PReLU"},
    "prelu_c_prelu": {"prelu_table5:C, PReLU", "prelu_table6:C, PReLU"},
    "convpool_baseline": {"crelu_table1:Baseline"},
    "convpool_double": {"crelu_table1:+ (double)"},
    "convpool_avr": {"crelu_table1:AVR"},
    "convpool_prelu": {"crelu_table1:PReLU (He et al.)"},
    "convpool_crelu": {"crelu_table1:CReLU"},
    "convpool_crelu_half": {"crelu_table1:+ (half)"},
    "vgg_cifar_baseline": {"crelu_table2:VGG"},
    "vgg_cifar_crelu1": {"crelu_table2:(conv1)"},
    "vgg_cifar_crelu13": {"crelu_table2:(conv1,3)"},
    "vgg_cifar_crelu135": {"crelu_table2:(conv1,3,5)"},
    "allcnn_b_baseline": {"crelu_table4:Baseline"},
    "allcnn_b_avr1_4": {"crelu_table4:AVR (conv1-4)"},
    "allcnn_b_avr1_7": {"crelu_table4:AVR (conv1-7)"},
    "allcnn_b_avr1_9": {"crelu_table4:AVR (conv1-9)"},
    "allcnn_b_crelu147": {"crelu_table4:CReLU (conv1,4,7)"},
    "allcnn_b_crelu1_4": {"crelu_table4:CReLU (conv1-4)"},
    "allcnn_b_crelu1_7": {"crelu_table4:CReLU (conv1-7)"},
    "allcnn_b_crelu1_9": {"crelu_table4:CReLU (conv1-9)"},
    "allcnn_b_crelu_all": {"crelu_table4:CReLU (all)"},
}  # the others (figures, B/C with ReLU, quickstart) have no paper row: "Other runs"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_recipe_lands_in_its_table_row(name):
    config = OmegaConf.to_container(compose_train([f"experiment={name}"]), resolve=True)
    variant, init = variant_from_config(config), config["init"]["name"]
    datasets = {"imagenet"} if config["dataset"]["name"] == "imagenet" else {"cifar10", "cifar100"}
    found = {
        f"{table.key}:{row.label}"
        for table in paper_tables()
        if datasets & {c.dataset for c in table.columns}
        for row in table.rows
        if row.variant == variant and row.init in (None, init)
    }
    assert found == ROWS.get(name, set())


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "quickstart"])
def test_recipe_says_what_it_chose(name):
    """Every paper row cites its paper, names its recipe, which says where it chose because the paper is silent,
    and names the script that sweeps it."""
    recipe, _ = CHANGES[name]
    text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
    recipe_text = (CONFIGS / "recipe" / f"{recipe}.yaml").read_text()
    assert text.startswith("# @package _global_\n") and recipe_text.startswith("# @package _global_\n")
    assert re.search(r"(He et al\. 2015|Shang et al\. 2016),.*\b(Tables?|Fig\.) \d", text), "cites its paper's table"
    assert f"override /recipe: {recipe}" in text and "Chosen" in recipe_text
    assert re.search(r"scripts/reproduce/\w+\.sh", text), "names the script that sweeps it"


# --------------------------------------------------------------------------------------- one step, tiny

TINY_TRAIN = [
    "model.width=0.125",
    "trainer.epochs=1",
    "trainer.max_steps_per_epoch=1",
    "trainer.threads=1",
    "trainer.device=cpu",
    "trainer.progress=none",
    "trainer.eval_batch_size=64",
    "logger=none",
]
TINY_CIFAR = ["dataset=synthetic", "dataset.image_size=16", "dataset.num_train=32", "dataset.num_test=16"]
TINY_CIFAR += ["trainer.batch_size=8"]
# Smallest crops that keep every stage non-empty: All-CNN-B's 11x11/4 conv and three stride-2 convs need 35
# pixels (34 leaves nothing for conv9); the PReLU nets end in adaptive SPP and run at 32.
CROP = {"allcnn_b": 35}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """2 classes, 4 training and 2 validation JPEGs each (48x40)."""
    return make_image_folder(tmp_path_factory.mktemp("imagenet"))


def _tiny_overrides(name: str, folder: Path) -> list[str]:
    want = expected(name)
    if want["dataset.name"] != "imagenet":
        return [*TINY_CIFAR, *TINY_TRAIN]
    crop = CROP.get(want["model.name"], 32)
    return [
        f"dataset.root={folder}",
        "dataset.num_classes=2",
        f"dataset.image_size={crop}",
        f"dataset.scale_min={crop + 4}",
        f"dataset.scale_max={crop + 4}",
        "dataset.num_test=null",  # Figs. 2-3 sample 3,000: the tiny split has 4
        "dataset.stats_images=4",
        "dataset.workers=0",
        f"eval.size={crop + 4}",
        "trainer.batch_size=4",
        *TINY_TRAIN,
    ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_recipe_trains_one_step(name, tmp_path, image_folder, one_thread):
    run_dir = tmp_path / "run"
    results = run(compose_train([f"experiment={name}", *_tiny_overrides(name, image_folder)], run_dir))

    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "completed" and saved["epochs"] == 1
    assert math.isfinite(saved["final"]["loss"]) and math.isfinite(results["final"]["loss"])
    train_loss = [json.loads(line)["train/loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(train_loss) == 1 and math.isfinite(train_loss[0])
    # shrinking touched sizes only: what the recipe pins about the network and the optimizer is what ran
    config = saved["config"]
    for key, want in expected(name).items():
        section, field = key.split(".", 1)
        if section in ("model", "activation", "init", "optim", "schedule") and key != "model.width":
            got = config[section][field]
            if isinstance(want, dict):
                got = {int(k): v for k, v in got.items()}
            assert got == want, f"{key}: ran with {got}, the recipe pins {want}"


# --------------------------------------------------------------------------------------- reproduce scripts

SCRIPTS = ROOT / "scripts" / "reproduce"
# script -> (experiments of its train.py grid(s), eval.py protocols run on every finished run)
SWEEPS = {
    "prelu_table2.sh": (
        {"small14_relu", "small14_prelu_shared", "small14_prelu", "small14_relu_xavier"},
        {"ten_view"},
    ),
    "prelu_fig2.sh": ({"fig2_b_kaiming", "fig2_b_xavier"}, set()),
    "prelu_fig3.sh": ({"fig3_plain30_kaiming", "fig3_plain30_xavier"}, set()),
    "prelu_tables4to6.sh": ({"prelu_a_relu", "prelu_a_prelu", "prelu_b_prelu", "prelu_c_prelu"}, {"ten_view", "dense"}),
    "crelu_table1.sh": (
        {
            "convpool_baseline",
            "convpool_double",
            "convpool_avr",
            "convpool_crelu",
            "convpool_crelu_half",
            "convpool_prelu",
        },
        set(),
    ),
    "crelu_table2.sh": ({"vgg_cifar_baseline", "vgg_cifar_crelu1", "vgg_cifar_crelu13", "vgg_cifar_crelu135"}, set()),
    "crelu_table4.sh": (
        {
            "allcnn_b_baseline",
            "allcnn_b_avr1_4",
            "allcnn_b_avr1_7",
            "allcnn_b_avr1_9",
            "allcnn_b_crelu147",
            "allcnn_b_crelu1_4",
            "allcnn_b_crelu1_7",
            "allcnn_b_crelu1_9",
            "allcnn_b_crelu_all",
        },
        {"center", "ten_view"},
    ),
}


def _script(name: str, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("SEEDS", "FOLDS", "LAUNCHER", "GPUS", "DRY_RUN")}
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environ, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=ROOT,
        check=False,
    )


def _commands(output: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def _overrides(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command if "=" in arg)


def test_every_table_has_a_script():
    # crelu_table1_mini.sh (Table 1 converged at a reduced width): tests/test_reproduce_mini.py
    assert {p.name for p in SCRIPTS.glob("*_*.sh")} == {*SWEEPS, "crelu_table1_mini.sh"}


@pytest.mark.parametrize("script", sorted(SWEEPS))
def test_dry_run_lists_the_tables_grid(script, tmp_path):
    experiments, protocols = SWEEPS[script]
    sweep = tmp_path / "sweep"
    done = _script(script, "--dry-run", "--sweep-dir", str(sweep), "dataset.root=/data/x")
    assert done.returncode == 0, done.stderr
    assert not sweep.exists(), "a dry run writes nothing"
    commands = _commands(done.stdout)
    trains = [_overrides(c) for c in commands if c[1].endswith("train.py") and c[2] == "-m"]
    assert trains, done.stdout
    for overrides in trains:
        assert set(overrides["experiment"].split(",")) == experiments
        assert overrides["hydra.sweep.dir"] == str(sweep)
        assert overrides["hydra.sweep.subdir"] == "${hydra.job.override_dirname}"
        assert overrides["dataset.root"] == "/data/x"
        assert "seed" in overrides
    if script.startswith("crelu_table") and script != "crelu_table4.sh":  # CIFAR: Single + 10-fold runs
        assert [o.get("dataset.fold") for o in trains] == [None, "0,1,2,3,4,5,6,7,8,9"]
        assert all(o["dataset"] == "cifar10,cifar100" for o in trains)
    evals = [_overrides(c) for c in commands if c[1].endswith("eval.py")]
    assert {o["eval.protocol"] for o in evals} == protocols
    for protocol in protocols:  # every run of the grid, on its final model
        runs = {o["run_dir"] for o in evals if o["eval.protocol"] == protocol}
        assert {re.search(r"experiment=(\w+)", r)[1] for r in runs} == experiments
        assert all(o["checkpoint"] == f"{o['run_dir']}/checkpoints/last.pt" for o in evals)
    tables = [i for i, c in enumerate(commands) if c[1:3] == ["-m", "rectnet.tables"]]
    assert len(tables) == 1 and commands[tables[0]][3] == str(sweep)
    assert all(not c[1].endswith(("train.py", "eval.py")) for c in commands[tables[0] :]), "tables come last"


def test_gpus_keep_the_global_batch(tmp_path):
    """The recipes state the papers' global mini-batch; the processes share it (He et al. 2015 §3: 128, "not
    increased for multi-GPU"), and the scripts no longer split it themselves, so run names do not name GPUS."""
    done = _script("crelu_table4.sh", "--dry-run", "--sweep-dir", str(tmp_path), env={"GPUS": "8", "LAUNCHER": "slurm"})
    assert done.returncode == 0, done.stderr
    train = _overrides(next(c for c in _commands(done.stdout) if c[1].endswith("train.py")))
    assert "trainer.batch_size" not in train
    assert (train["hydra/launcher"], train["hydra.launcher.tasks_per_node"]) == ("slurm", "8")
    for recipe in ("he_large", "he_small", "convpool", "vgg_cifar", "allcnn_b"):
        trainer = to_settings(compose_train([f"recipe={recipe}"])).trainer
        assert [trainer.batch_sizes(n) for n in (1, 4, 8)] == [(128, 128), (32, 128), (16, 128)], recipe
        with pytest.raises(ConfigError, match="must divide among the 3 processes"):
            trainer.batch_sizes(3)


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_resumes_the_rest(tmp_path):
    """One real CIFAR-script run at a tiny size: the run directory is the one grid.py predicts; a second
    invocation trains nothing; a run whose results are gone is launched again and resumes from its checkpoint."""
    sweep = tmp_path / "sweep"
    tiny = ["experiment=convpool_baseline,convpool_avr", "seed=0", *TINY_CIFAR, *TINY_TRAIN]
    env = {"FOLDS": ""}
    first = _script("crelu_table1.sh", "--sweep-dir", str(sweep), *tiny, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert [re.search(r"experiment=(\w+)", p.name)[1] for p in runs] == ["convpool_avr", "convpool_baseline"]
    assert (sweep / "tables" / "tables.md").is_file()
    assert sorted((sweep / "queue.txt").read_text().splitlines()) == [p.name for p in runs]  # for progress.py

    second = _script("crelu_table1.sh", "--sweep-dir", str(sweep), *tiny, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "nothing to train" in second.stderr and not any(c[1].endswith("train.py") for c in _commands(second.stdout))

    (runs[0] / "results.json").unlink()  # as if killed after its last checkpoint
    third = _script("crelu_table1.sh", "--sweep-dir", str(sweep), *tiny, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    (train,) = [_overrides(c) for c in _commands(third.stdout) if c[1].endswith("train.py")]
    assert train["experiment"] == "convpool_avr"  # only the unfinished run
    assert "resumed at epoch 1" in (runs[0] / "train.log").read_text()
    assert json.loads((runs[0] / "results.json").read_text())["status"] == "completed"
    assert sorted((sweep / "queue.txt").read_text().splitlines()) == [p.name for p in runs]  # each run once


@pytest.mark.slow
def test_single_protocol_runs_both_stages_once(tmp_path):
    """SINGLE=1: stage 1 (4/5 of the images, training loss recorded at the best held-out error), then per
    stage-1 run its stage 2 (every image, stopped at that loss); a second invocation trains nothing."""
    sweep = tmp_path / "sweep"
    # without max_steps_per_epoch: run directory names (every override) must stay under 255 bytes
    tiny = ["experiment=convpool_baseline", "seed=0", *TINY_CIFAR, *TINY_TRAIN[:2], *TINY_TRAIN[3:]]
    env = {"FOLDS": "", "SINGLE": "1", "SEEDS": "0"}  # the script's 6 x 2 cells (of 6 x 2 x 3) are this one run
    first = _script("crelu_table1.sh", "--sweep-dir", str(sweep), *tiny, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    (stage1,) = [r for name, r in results.items() if "record_train_loss_at_best=True" in name]
    (stage2,) = [r for name, r in results.items() if "holdout_in_train=True" in name]
    assert stage2["config"]["trainer"]["stop_at_val_loss"] == stage1["train_loss_at_best"]
    assert stage1["config"]["dataset"]["num_folds"] == stage2["config"]["dataset"]["num_folds"] == 5
    # one stage 2 for the one stage-1 run, not one look per cell the overrides merged into it
    assert first.stderr.count("every run of this grid has finished") == 0, first.stderr[-3000:]

    second = _script("crelu_table1.sh", "--sweep-dir", str(sweep), *tiny, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not any(c[1].endswith("train.py") for c in _commands(second.stdout))


@pytest.mark.parametrize(("code", "stops"), [(143, True), (130, True), (1, False)])
def test_a_sweep_stopped_by_a_signal_stops_the_script(tmp_path, code, stops):
    """common.sh's train_grid: `train.py -m` exits 130 / 143 when Ctrl-C or SIGTERM stopped its run at a checkpoint
    (the rest of that sweep unstarted): the script stops too, instead of launching its next grid; any other
    failure is noted and the script goes on. train.py is a stub here that logs its call and exits CODE."""
    stub = tmp_path / "python"
    calls = tmp_path / "calls"
    stub.write_text(
        f'#!/usr/bin/env bash\nif [[ $1 == */train.py ]]; then echo "$*" >>{calls}; exit {code}; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    stub.chmod(0o755)
    script = (
        f"source {SCRIPTS / 'common.sh'}; reproduce_setup t --sweep-dir {tmp_path / 'sweep'}; "
        "train_grid seed=0; train_grid seed=1; echo went on SWEEP_FAILED=$SWEEP_FAILED"
    )
    done = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; {script}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(stub)},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    launched = calls.read_text().splitlines()
    if stops:
        assert done.returncode == code and "went on" not in done.stdout
        assert len(launched) == 1 and "stopped by a signal" in done.stderr
    else:
        assert done.returncode == 0 and "went on SWEEP_FAILED=1" in done.stdout
        assert [re.search(r"seed=\d", c)[0] for c in launched] == ["seed=0", "seed=1"]
