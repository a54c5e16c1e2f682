"""Every command a user is shown runs (issue 22: copied commands had drifted from the code and failed).

Where the commands come from:

* README.md and docs/**/*.md (the results pages included): each line of a fenced shell block (continuation
  lines joined, `# comments` dropped; a line that only assigns shell variables, `COMMON="..."`, is no command:
  its values replace `$COMMON` in the block's later lines) and each line of an untagged block that starts with a
  program, each inline `python ...` / `bash ...` / `torchrun ...` / `pip ...` span, and each ```python block. A
  python block that a document introduces as a file for the reader to write ("`mypkg/acts.py`:") is written to a
  folder on sys.path for that document's commands. A command shown in several places is checked once;
* configs/**/*.yaml: each comment line that starts with a command (`#   python train.py ...`); what follows two
  or more spaces is its explanation, a trailing backslash continues it on the next comment line. A command
  written inside a sentence would escape this, so such comments are refused (`test_config_comments_...`).

How each is checked, by its program:

* `python train.py`, and the train.py part of `torchrun`: composed with Hydra's compose API as train.py
  composes it (a sweep's `-m a,b` expanded into its jobs), then validated by `to_settings`, which runs the
  typed schema and rectnet's preflight: what train.py would refuse before training fails here. The memory
  check is left out: the commands are meant for the machines the papers' models need, not for this one.
* `python eval.py`: run in-process on a tiny ImageNet-style run that this module trains (placeholders such as
  `<run directory>` point to it).
* `python -m M`: M imports; its key=value words compose as rectnet's command-line modules compose them;
  each `--option` it is given appears in its `--help`.
* `python <script>.py`, `bash <script>`, `scripts/...`: the script exists; a Python script's `--options`
  appear in its `--help`; scripts/reproduce commands run with DRY_RUN=1 (they print what they would run), but
  single.sh, which has no dry run.
* `pip install -e '.[extra]'`: pyproject.toml has that extra.
* ```python blocks: executed.

Whatever cannot be checked here is in SKIPPED, with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import os
import re
import runpy
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import CONFIGS, ROOT, compose_train, make_image_folder
from hydra.core.override_parser.overrides_parser import OverridesParser

from rectnet.config import to_settings
from rectnet.engine import eval_command, preflight
from rectnet.engine.train import run
from rectnet.summary import compose_settings

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
YAMLS = sorted(CONFIGS.rglob("*.yaml"))

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
SHELL = {"bash", "sh", "shell", "console"}
PROGRAMS = ("python", "bash", "torchrun", "pip")  # what an inline span or a comment line starts with to count
COMMENT_COMMAND = re.compile(r"^\s*#\s+((?:python|bash|torchrun)\s.*)$")
# a command, or a quoted override to add to one, in the prose of a comment, where the extraction cannot see it
COMMAND_IN_PROSE = re.compile(r"\b(python (?:train\.py|eval\.py|-m )|torchrun )|'[+~]*[a-z_]+\.[a-z_.]+=")
EXPLANATION = re.compile(r"\s{2,}")  # a comment command ends where two or more spaces begin its explanation
ENVIRONMENT = re.compile(r"[A-Z_][A-Z0-9_]*=.*", re.S)  # a shell word: `SEEDS="0 1 2"` is one

# Commands not run here, each with its reason (the whole command as shown, or its start).
SKIPPED = {
    "tensorboard --logdir": "starts a web server; the package is a dependency in pyproject.toml",
}

# What a placeholder stands for in a command that is checked: `run` is the tiny ImageNet-style run (eval.py);
# a template's slot (a results page's "one command per activation <a>") is checked with one example value.
PLACEHOLDERS = {
    "activation=<a>": "activation=prelu",
    "init.mode=<m>": "init.mode=fan_out",
    "experiment=convpool_<row>": "experiment=convpool_crelu",
    "model.width=W": "model.width=0.25",
    "seed=S": "seed=0",
    "<run directory>": "{run}",
    "<run dir>": "{run}",
    "<run>": "{run}",
    "RUN/": "{run}/",
    "<file>": "{run}/checkpoints/last.pt",
}


@dataclass(frozen=True)
class Shown:
    """A command as a user sees it: where it is shown, and its text."""

    where: str
    text: str

    def words(self, run: Path | str = "RUN") -> list[str]:
        """The shell words, placeholders filled in with `run`, `# comments` dropped, `VAR=value` prefixes kept."""
        text = self.text
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value.format(run=run))
        return shlex.split(text, comments=True)

    def environment(self) -> dict[str, str]:
        """The leading environment assignments (`SINGLE=1 scripts/...`)."""
        assignments = itertools.takewhile(lambda w: ENVIRONMENT.fullmatch(w), self.words())
        return dict(w.split("=", 1) for w in assignments)

    def program(self) -> list[str]:
        """The words after the environment assignments: the program and its arguments."""
        return self.words()[len(self.environment()) :]

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _joined(lines: list[str]) -> list[tuple[int, str]]:
    """(index of the first line, the command) for each command of a block, backslash continuations joined."""
    commands, pending, start = [], "", 0
    for index, line in enumerate(lines):
        if not pending:
            start = index
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending and not pending.startswith("#"):
            commands.append((start, pending))
        pending = ""
    return commands


def _is_command(line: str) -> bool:
    """Whether a line of an untagged block is a command (such blocks also hold file trees and layouts)."""
    words = [w for w in line.split() if not ENVIRONMENT.fullmatch(w)]
    return bool(words) and (words[0] in PROGRAMS or re.fullmatch(r"scripts/\S+\.(sh|py)", words[0]) is not None)


def _assignments(command: str) -> dict[str, str] | None:
    """The variables a line that only assigns shell variables sets (`COMMON="a=1 b=2"`), else None."""
    words = shlex.split(command, comments=True)
    if not words or not all(ENVIRONMENT.fullmatch(w) for w in words):
        return None
    return dict(w.split("=", 1) for w in words)


def block_commands(path: Path) -> list[Shown]:
    text, name = path.read_text(), path.relative_to(ROOT)
    shown = []
    for fence in FENCE.finditer(text):
        language = fence.group(1)
        if language not in SHELL and language != "":
            continue
        first, variables = _line(text, fence.start(2)), {}
        for index, command in _joined(fence.group(2).splitlines()):
            assigned = _assignments(command) if language else None
            if assigned is not None:
                variables |= assigned
            elif language or _is_command(command):
                command = string.Template(command).safe_substitute(variables)
                shown.append(Shown(f"{name}:{first + index}", command))
    return shown


def inline_commands(path: Path) -> list[Shown]:
    """Inline code spans that are commands; fenced blocks are blanked first (line numbers kept)."""
    text, name = path.read_text(), path.relative_to(ROOT)
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    shown = []
    for span in re.finditer(r"`([^`]+)`", prose):
        words = span.group(1).split()  # a span may wrap onto the next line
        if words[0] in PROGRAMS and len(words) > 1:  # `torchrun` alone names the program, it is no command
            command = " ".join(words)
            shown.append(Shown(f"{name}:{_line(prose, span.start())}", command))
    return shown


def python_snippets(path: Path) -> list[Shown]:
    text, name = path.read_text(), path.relative_to(ROOT)
    return [
        Shown(f"{name}:{_line(text, f.start(2))}", f.group(2)) for f in FENCE.finditer(text) if f.group(1) == "python"
    ]


def example_files(path: Path) -> dict[str, str]:
    """The files a document asks the reader to write: a ```python block right after a line that ends with ':' and
    names a `<path>.py` not in this repository ("Worked example, `mypkg/acts.py` on `PYTHONPATH`:")."""
    text, files = path.read_text(), {}
    for fence in FENCE.finditer(text):
        introduction = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        named = re.search(r"`([\w/]+\.py)`", introduction)
        if fence.group(1) == "python" and named and introduction.endswith(":") and not (ROOT / named[1]).exists():
            files[named[1]] = fence.group(2)
    return files


def document(shown: Shown) -> Path:
    return ROOT / shown.where.rsplit(":", 1)[0]


@pytest.fixture
def examples(tmp_path, monkeypatch):
    """install(doc): write the document's example files into a folder on sys.path, as its reader does; the
    modules imported from them are forgotten afterwards."""
    modules = set(sys.modules)

    def install(doc: Path) -> None:
        for relative, content in example_files(doc).items():
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / relative).write_text(content)
        monkeypatch.syspath_prepend(str(tmp_path))

    yield install
    for name in set(sys.modules) - modules:
        module = sys.modules[name]
        where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), "/")
        if Path(where).is_relative_to(tmp_path):  # a package without __init__.py has only its __path__
            del sys.modules[name]


def comment_commands(path: Path) -> list[Shown]:
    name = path.relative_to(ROOT)
    return [Shown(f"{name}:{lines.start + 1}", command) for lines, command in _comment_commands(path)]


def _comment_commands(path: Path) -> list[tuple[range, str]]:
    """(the lines it takes, the command) of each command in `path`'s comments."""
    lines = path.read_text().splitlines()
    found = []
    index = 0
    while index < len(lines):
        match = COMMENT_COMMAND.match(lines[index])
        start = index
        index += 1
        if not match:
            continue
        command = EXPLANATION.split(match.group(1).strip())[0]
        while command.endswith("\\") and index < len(lines):
            command = command[:-1] + " " + EXPLANATION.split(lines[index].lstrip("# ").strip())[0]
            index += 1
        found.append((range(start, index), command))
    return found


def all_shown() -> list[Shown]:
    """Each distinct command once, where it is first shown (a results page logs the same command per session)."""
    shown = [c for path in DOCS for c in (*block_commands(path), *inline_commands(path))]
    shown += [c for path in YAMLS for c in comment_commands(path)]
    distinct: dict[tuple[str, ...], Shown] = {}
    for command in shown:
        distinct.setdefault(tuple(command.words()), command)
    return list(distinct.values())


SHOWN = all_shown()


def kind(shown: Shown) -> str:
    """What checks `shown`: train, eval, module, script, pip or skipped (unknown fails the test below)."""
    if any(shown.text.startswith(start) for start in SKIPPED):
        return "skipped"
    words = shown.program()
    if words[0] == "torchrun" or words[:2] == ["python", "train.py"]:
        return "train"
    if words[:2] == ["python", "eval.py"]:
        return "eval"
    if words[:2] == ["python", "-m"]:
        return "module"
    if words[0] in ("python", "bash") or words[0].startswith("scripts/"):
        return "script"
    if words[:2] == ["pip", "install"]:
        return "pip"
    return "unknown"


def of_kind(name: str) -> list[Shown]:
    return [s for s in SHOWN if kind(s) == name]


def test_every_shown_command_is_checked():
    assert len(SHOWN) > 50, "the extraction found almost nothing: has the README's format changed?"
    unknown = [str(s) for s in SHOWN if kind(s) == "unknown"]
    assert not unknown, f"commands nothing here checks (add a check, or a SKIPPED entry with the reason): {unknown}"


def test_config_comments_show_commands_on_their_own_lines():
    hidden = []
    for path in YAMLS:
        commands = {number for lines, _ in _comment_commands(path) for number in lines}
        for number, line in enumerate(path.read_text().splitlines()):
            if line.lstrip().startswith("#") and number not in commands and COMMAND_IN_PROSE.search(line):
                hidden.append(f"{path.relative_to(ROOT)}:{number + 1}: {line.strip()}")
    assert not hidden, f"commands inside comment prose (start a comment line with them, so they are tested): {hidden}"


# ----------------------------------------------------------------------------------------------- train.py


@pytest.fixture
def any_machine(monkeypatch):
    """The preflight without its memory check: documented commands are for the machines they name."""
    monkeypatch.setattr(preflight, "_device_memory", lambda name, local_rank: None)


def train_arguments(words: list[str]) -> tuple[list[str], int]:
    """(train.py's arguments, the number of processes) of `python train.py ...` or `torchrun ... train.py ...`."""
    script = words.index("train.py")
    launcher = dict(w.lstrip("-").split("=", 1) for w in words[1:script] if w.startswith("--") and "=" in w)
    processes = int(launcher.get("nproc_per_node", 1)) * int(launcher.get("nnodes", 1))
    return words[script + 1 :], processes


def sweep_jobs(arguments: list[str]) -> list[list[str]]:
    """The overrides of each job: one job, or with -m/--multirun every combination of the comma sweeps."""
    flags = {"-m", "--multirun"}
    multirun = bool(flags & set(arguments))
    words = [w for w in arguments if w not in flags]
    if "--cfg" in words:  # prints the composed config: composing it is the check
        at = words.index("--cfg")
        words = words[:at] + words[at + 2 :]
    assert not [w for w in words if w.startswith("-")], f"train.py takes no other options: {words}"
    if not multirun:
        return [words]
    choices = []
    for override in OverridesParser.create().parse_overrides(words):
        if override.is_sweep_override():
            choices.append([f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


@pytest.mark.usefixtures("any_machine")
@pytest.mark.parametrize("shown", of_kind("train"), ids=str)
def test_train_command_composes_and_passes_the_preflight(shown, examples):
    examples(document(shown))  # a custom activation's module, where the document has the reader write one
    arguments, processes = train_arguments(shown.program())
    for job in sweep_jobs(arguments):
        settings = to_settings(compose_train(job))
        settings.trainer.batch_sizes(processes)  # the global batch must divide among the processes


# ----------------------------------------------------------------------------------------------- eval.py

# A 1-epoch run on a tiny ImageNet-style tree: what eval.py's commands are run against.
TINY_IMAGENET = [
    "dataset=imagenet",
    "dataset.num_classes=4",
    "dataset.image_size=32",
    "dataset.scale_min=36",
    "dataset.scale_max=48",
    "dataset.workers=0",
    "dataset.stats_images=16",
    "eval.size=36",
    "model.width=0.125",
    "schedule=constant",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=8",
    "trainer.epochs=1",
    "trainer.progress=none",
    "trainer.threads=1",
    "logger=none",
]


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory) -> Path:
    tree = make_image_folder(tmp_path_factory.mktemp("imagenet"), classes=4, train=4, val=1)
    run_dir = tmp_path_factory.mktemp("run")
    run(compose_train([*TINY_IMAGENET, f"dataset.root={tree}"], run_dir))
    return run_dir


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("shown", of_kind("eval"), ids=str)
def test_eval_command_evaluates_a_run(shown, imagenet_run):
    words = shown.words(imagenet_run)
    assert words[:2] == ["python", "eval.py"]
    assert eval_command.main(words[2:]) == 0


# ----------------------------------------------------------------------------------------------- python -m


def help_text(run_as_main, name: str) -> str:
    """What `<name> --help` prints; `run_as_main` runs the module's or script's main with --help (argparse's help
    exits; sys.argv is set for those that read it)."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [name, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
            run_as_main()
    finally:
        sys.argv = argv
    assert exited.value.code in (0, None), f"{name} --help exited with {exited.value.code}"
    return out.getvalue()


def options(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


@pytest.mark.parametrize("shown", of_kind("module"), ids=str)
def test_module_command_imports_and_takes_its_arguments(shown):
    module, arguments = shown.program()[2], shown.program()[3:]
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    if not module.startswith("rectnet"):
        return  # another project's module (pytest): that it imports is what this repository controls
    overrides = [w for w in arguments if "=" in w and not w.startswith("-")]
    if overrides:
        compose_settings(overrides)  # as rectnet.summary, the analyses and the probe compose them
    main = importlib.import_module(module).main  # what `python -m` runs: each CLI module's main(argv)
    text = help_text(lambda: main(["--help"]), module)
    missing = [o for o in options(arguments) if o not in text]
    assert not missing, f"{module} --help does not list {missing}"


# ----------------------------------------------------------------------------------------------- scripts


def script_path(words: list[str]) -> Path:
    return ROOT / (words[1] if words[0] in ("python", "bash") else words[0])


@pytest.mark.parametrize("shown", of_kind("script"), ids=str)
def test_script_exists_and_takes_its_options(shown):
    words = shown.program()
    path = script_path(words)
    if not path.resolve().is_relative_to(ROOT) and not path.exists():
        pytest.skip(f"{path} is outside this repository and not on this machine")
    assert path.is_file(), f"{path} does not exist"
    arguments = words[2:] if words[0] in ("python", "bash") else words[1:]
    if words[0].startswith("scripts/"):
        assert os.access(path, os.X_OK), f"{path} is run directly but is not executable"
    if path.suffix == ".py" and options(arguments):
        text = help_text(lambda: runpy.run_path(str(path), run_name="__main__"), str(path))
        missing = [o for o in options(arguments) if o not in text]
        assert not missing, f"{path.name} --help does not list {missing}"


def runs_dry(shown: Shown) -> bool:
    """A scripts/reproduce table script (common.sh's DRY_RUN); single.sh, one run's two stages, trains at once."""
    return "scripts/reproduce/" in shown.text and script_path(shown.program()).name != "single.sh"


@pytest.mark.slow
@pytest.mark.parametrize("shown", [s for s in of_kind("script") if runs_dry(s)], ids=str)
def test_reproduce_command_runs_dry(shown, tmp_path):
    done = subprocess.run(
        shown.program(),
        cwd=ROOT,
        env={**os.environ, **shown.environment(), "DRY_RUN": "1", "SWEEP_DIR": str(tmp_path / "sweep")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "sweep").exists(), "a dry run writes nothing"


# ----------------------------------------------------------------------------------------------- the rest


@pytest.mark.parametrize("shown", of_kind("pip"), ids=str)
def test_pip_extras_exist(shown):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11's; 3.10 has none
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for word in shown.program()[2:]:
        for wanted in re.findall(r"\[([\w,-]+)\]", word):
            assert set(wanted.split(",")) <= set(extras), f"pyproject.toml has no extra {wanted}"


@pytest.mark.parametrize("snippet", [s for path in DOCS for s in python_snippets(path)], ids=lambda s: s.where)
def test_python_snippet_runs(snippet, one_thread, examples):
    examples(document(snippet))
    exec(compile(snippet.text, snippet.where, "exec"), {"__name__": "__snippet__"})


# ----------------------------------------------------------------------------------------------- dataset.root


def bench_data(argv: list[str], capsys) -> dict:
    """scripts/bench/data.py's JSON line for `argv`, at the smallest sizes that still measure something."""
    bench = runpy.run_path(str(ROOT / "scripts" / "bench" / "data.py"))
    bench["main"]([*argv, "--rounds", "1", "--images", "4", "--batch", "4", "--draws", "100"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.usefixtures("one_thread")
def test_bench_data_reads_dataset_root_as_train_py_does(tmp_path, capsys):
    # dataset.root is the folder holding train/ and val/ for train.py; the benchmark reads the same splits
    tree = make_image_folder(tmp_path, classes=2, train=3, val=2)
    settings = to_settings(compose_train(["dataset=imagenet", f"dataset.root={tree}"]), training=False)
    data = settings.dataset
    train = bench_data([f"dataset.root={tree}"], capsys)
    assert (train["split"], train["folder"], train["images"]) == ("train", str(tree / data.train_split), 2 * 3)
    test = bench_data([f"dataset.root={tree}", "--split", "test"], capsys)
    assert (test["split"], test["folder"], test["images"]) == ("test", str(tree / data.test_split), 2 * 2)
    # a folder of classes is a root whose split is the root itself, as train.py's dataset.train_split= says
    flat = bench_data([f"dataset.root={tree / 'train'}", "dataset.train_split="], capsys)
    assert (flat["folder"], flat["images"]) == (str(tree / "train"), 2 * 3)


# ----------------------------------------------------------------------------------------------- config groups

LISTED_GROUPS = ("dataset", "model", "activation", "init", "optim", "schedule", "logger", "recipe")


def _parenthesis_after(text: str, start: int) -> str:
    """The text inside the parenthesis that opens at or after `start`, nested ones included."""
    opening = text.index("(", start)
    depth = 0
    for index in range(opening, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[opening + 1 : index]
    raise AssertionError(f"unclosed parenthesis at {opening}")


@pytest.mark.parametrize("group", LISTED_GROUPS)
def test_readme_config_groups_name_every_option(group):
    # the README's list of each group's options (model=timm was missing from it); experiments are too many to list
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Config groups (`configs/`):") :].split("\n\n")[0]
    listed = set(re.findall(r"\w+", _parenthesis_after(paragraph, paragraph.index(f"`{group}` ("))))
    options = {p.stem for p in (CONFIGS / group).glob("*.yaml")}
    assert options <= listed, f"README.md's config groups leave out {group}={sorted(options - listed)}"


# ----------------------------------------------------------------------------------------------- scripts/README.md


def test_scripts_readme_has_a_line_for_every_script_and_names_only_existing_ones():
    # scripts/README.md is the index of scripts/: a script added without its line, or a line left behind by a
    # move, is a drift a user hits when copying a command from it
    scripts = ROOT / "scripts"
    index = (scripts / "README.md").read_text()
    files = {
        p.relative_to(scripts).as_posix()
        for p in scripts.rglob("*")
        if p.is_file() and p.suffix in (".py", ".sh") and "__pycache__" not in p.parts
    }
    sections = re.split(r"^## ", index, flags=re.M)[1:]
    listed = set()
    for section in sections:
        folder = section.split()[0].rstrip("/")
        prefix = "" if folder == "scripts" else f"{folder}/"
        listed |= {prefix + name for name in re.findall(r"^- `([\w./-]+)`", section, flags=re.M)}
    assert files - listed == set(), f"scripts/README.md has no line for {sorted(files - listed)}"
    assert listed - files == set(), f"scripts/README.md lists scripts that do not exist: {sorted(listed - files)}"
    named = set(re.findall(r"scripts/[\w./-]+\.(?:py|sh)", index))
    assert all((ROOT / path).is_file() for path in named), sorted(p for p in named if not (ROOT / p).is_file())
