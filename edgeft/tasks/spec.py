"""`--task NAME=FILE` and `--task-modules NAME=KIND`: the tasks of one build, checked before any stage runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgeft.errors import ConfigError, EdgeftError

# Which linear layers a task's LoRA adapts. Names cover every family we convert (Phi-3 fuses qkv and
# gate/up); peft adapts those a model has.
MODULES: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj", "gate_up_proj"),
    "all": ("all-linear",),
}
DEFAULT_MODULES = "all"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    data: Path
    modules: str = DEFAULT_MODULES

    def target_modules(self) -> tuple[str, ...]:
        return MODULES[self.modules]


def _pair(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ConfigError([(flag, f"expected NAME=VALUE, got {text!r}")])
    return name.strip(), value.strip()


def parse_tasks(tasks: Sequence[str], modules: Sequence[str] = ()) -> list[TaskSpec]:
    """Every problem at once (bad names, duplicates, unknown task names in --task-modules, unknown
    kinds); a missing data file is one line naming it."""
    problems: list[tuple[str, str]] = []
    specs: dict[str, Path] = {}
    for text in tasks:
        name, value = _pair(text, "--task")
        if not _NAME.match(name):
            problems.append(("--task", f"task name {name!r} must be lower-case letters, digits, '_' or '-', "
                                       "starting with a letter (it names the adapter file)"))
        elif name in specs:
            problems.append(("--task", f"task {name!r} is given twice"))
        specs[name] = Path(value)
    kinds: dict[str, str] = {}
    for text in modules:
        name, kind = _pair(text, "--task-modules")
        if name not in specs:
            known = ", ".join(specs) or "none given"
            problems.append(("--task-modules", f"unknown task name {name!r} (tasks: {known})"))
        elif kind not in MODULES:
            problems.append(("--task-modules", f"{name}: unknown modules {kind!r} (one of {', '.join(MODULES)})"))
        else:
            kinds[name] = kind
    if problems:
        raise ConfigError(problems)  # each problem names its flag
    for name, path in specs.items():
        if not path.is_file():
            raise EdgeftError(f"no such data file (task {name})", file=path)
    return [TaskSpec(name, path, kinds.get(name, DEFAULT_MODULES)) for name, path in specs.items()]


def read_task_file(path: Path) -> tuple[list[str], list[str]]:
    """A build file's `[tasks]` table as `--task` and `--task-modules` values, data paths taken relative
    to the file:

        [tasks]
        intent = "intent.jsonl"
        extract = { data = "extract.jsonl", modules = "attention" }
    """
    from edgeft.config import read_toml

    raw = read_toml(path)
    problems = [(key, "unknown key (allowed: tasks)") for key in raw if key != "tasks"]
    table = raw.get("tasks")
    if not isinstance(table, dict) or not table:
        problems.append(("tasks", "expected a [tasks] table with one NAME = \"FILE\" (or { data, modules }) per task"))
        raise ConfigError(problems, file=path)
    tasks, modules = [], []
    for name, value in table.items():
        if isinstance(value, dict):
            extra = sorted(set(value) - {"data", "modules"})
            if extra:
                problems.append((f"tasks.{name}.{extra[0]}", "unknown key (allowed: data, modules)"))
            data, kind = value.get("data"), value.get("modules")
            if kind is not None:
                if not isinstance(kind, str):
                    problems.append((f"tasks.{name}.modules", f"expected a string, got {type(kind).__name__}"))
                else:
                    modules.append(f"{name}={kind}")
        else:
            data = value
        if not isinstance(data, str) or not data:
            problems.append((f"tasks.{name}", "expected the data file's path (a string, or { data = \"FILE\" })"))
            continue
        tasks.append(f"{name}={(path.parent / data) if not Path(data).is_absolute() else data}")
    if problems:
        raise ConfigError(problems, file=path)
    return tasks, modules
