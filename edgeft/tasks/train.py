"""One LoRA adapter per task on one shared base, each exported in the backend's own adapter format.

The base is made once (the distilled student, or the model as it is with `--no-distill`); each task's
records go through the data stage (the teacher writes the targets a record lacks), then train a LoRA
on the fp32 base: against the teacher's logits beside the targets (KD), or on the targets alone (SFT;
`method_for` says when). Every stage is reused while its inputs are unchanged."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.errors import EdgeftError
from edgeft.manifest import sha256
from edgeft.progress import status
from edgeft.stages import key, reusable, stamp
from edgeft.tasks.spec import TaskSpec

# Records the diagonal Fisher is estimated on and stored with every task adapter, so that a later
# `edgeft distill --continue ADAPTER --ewc LAMBDA` can hold it to what this task relied on.
FISHER_RECORDS = 32
# A prefix trains at this learning rate, not the preset's LoRA one: on the shipped tasks it lifted
# extract from 5 % to 79 % exact fields (benchmarks/README.md, prefix_vs_lora.py).
PREFIX_LR = 1e-2
# A task trained against a teacher weighs its KD term at this and cross-entropy on the task's own targets
# at the rest, as every task figure in benchmarks/README.md was measured. The build's demo preset now
# distills with the teacher's logits alone (alpha 1.0) beside the student's own answers; a task's targets
# are a person's, which is what the cross-entropy half is for, so tasks keep their own weight.
TASK_KD_ALPHA = 0.5

if TYPE_CHECKING:
    from edgeft.backends.base import Artifact, Backend
    from edgeft.config import Target
    from edgeft.presets import BuildPreset


def _targets(task: TaskSpec) -> tuple[int, int]:
    """(records with their own target, records)."""
    from edgeft.data.prepare import human_target_count
    from edgeft.data.readers import read_raw

    return human_target_count(task.data), sum(1 for raw in read_raw(task.data) if raw.problem is None)


def check_targets(task: TaskSpec, teacher: bool) -> None:
    """With `--no-teacher` nobody writes a missing target: every record must bring its own."""
    if teacher:
        return
    have, total = _targets(task)
    if have < total:
        raise EdgeftError(f"task {task.name}: {total - have} of {total} records have no target, and --no-teacher leaves "
                          "nobody to write them (drop --no-teacher, or give every record a target)", file=task.data)


def method_for(task: TaskSpec, teacher: bool, base_is_teacher: bool) -> str:
    """"kd" (the teacher's logits beside the targets) or "sft" (the targets alone). When the base is the
    teacher itself (`--no-distill`), the logit term only pulls an adapter back toward the base's own
    answers: on human targets SFT is used (measured: benchmarks/README.md, task_levers.py);
    teacher-written targets keep KD."""
    if not teacher:
        return "sft"
    if base_is_teacher:
        have, total = _targets(task)
        if have == total:
            return "sft"
    return "kd"


@dataclass(frozen=True)
class TaskAdapters:
    entries: list[dict]  # one manifest entry per task
    base: "Artifact"  # the compiled base, as it takes the adapters (`Backend.adapter_base`)
    reference: "Artifact"  # its unquantized reference, the same way (the proof runs on it)


def train_adapters(model: str, teacher_dir: Path, base_dir: Path, base_key: str, tasks: Sequence[TaskSpec],
                   preset: "BuildPreset", backend: "Backend", work: Path, out_dir: Path,
                   *, base: "Artifact", reference: "Artifact", target: "Target", teacher: bool = True,
                   nf4_base: bool = False, adapter: str = "lora", prefix_lr: float = PREFIX_LR,
                   importance: Path | None = None) -> TaskAdapters:
    """Train every task's adapter, make the compiled base (and its reference) take them, and export
    each in the backend's format. `model` is the teacher's source string (for the data stage),
    `teacher_dir` its HF folder, `base_dir` the base, `base` the compiled base the adapters ship beside.
    `importance`: the file `base`'s rounding was weighed by, if any (a base exported again is rounded the same).

    The adapters train on the base at fp32 unless `nf4_base`: the shipped file is made from those
    weights, and an adapter trained on an NF4 base also learns to correct NF4's error, which the
    shipped file does not have (measured: benchmarks/README.md, task_levers.py)."""
    from edgeft import distill
    from edgeft.backends.registry import adapter_suffix
    from edgeft.data.prepare import prepare, settings_key
    from edgeft.distill.records import open_prepared

    suffix = adapter_suffix(backend.name, method=adapter)

    entries = []
    for task in tasks:
        t = time.perf_counter()
        root = work / "tasks" / task.name
        data_dir = root / "data"
        data_sha = sha256(task.data)
        data_key = key("task-data", data_sha, base_key, settings_key(preset.data))
        if not reusable(data_dir, data_key):
            status(f"task {task.name}: cleaning, splitting and letting the teacher write missing answers ...")
            prepare(task.data, model, data_dir, preset.data)
            stamp(data_dir, data_key)
        prepared = open_prepared(data_dir)
        method = method_for(task, teacher, Path(base_dir).resolve() == Path(teacher_dir).resolve())
        config = replace(preset.distill, student=str(base_dir), student_layers=None, keep_layers=None,
                         target_modules=task.target_modules(), alpha=TASK_KD_ALPHA if method == "kd" else 0.0, own_answer_tokens=0,
                         hidden_weight=0.0, fisher_records=FISHER_RECORDS, quantize_base=nf4_base, method=adapter,
                         lr=prefix_lr if adapter == "prefix" else preset.distill.lr)
        distill_dir = root / "distill"
        distill_key = key("task-adapter", data_key, str(teacher_dir), config.to_dict())
        reused = reusable(distill_dir, distill_key)
        if not reused:
            what = (f"LoRA adapter (modules: {task.modules})" if adapter == "lora"
                    else f"prefix ({config.prefix_tokens} virtual tokens per layer)")
            status(f"task {task.name}: training its {what} on the {'NF4' if nf4_base else 'fp32'} base "
                   f"({'against the teacher' if method == 'kd' else 'on the targets alone'}) ...")
            distill.run(str(teacher_dir), prepared, distill_dir, config)
            stamp(distill_dir, distill_key)
        entries.append({"task": task.name, "data": str(task.data), "data_sha256": data_sha,
                        "adapter_type": adapter, "modules": task.modules if adapter == "lora" else None,
                        "prefix_tokens": config.prefix_tokens if adapter == "prefix" else None,
                        "method": method, "nf4_base": nf4_base,
                        "adapter": str(out_dir / "adapters" / f"{task.name}{suffix}"),
                        "peft_adapter": str(distill_dir / "adapter"), "eval_split": str(prepared.eval),
                        "base_key": base_key, "reused": reused, "seconds": round(time.perf_counter() - t, 2)})
    peft_dirs = [Path(e["peft_adapter"]) for e in entries]
    base, reference = backend.adapter_base(base, reference, base_dir, peft_dirs, target, importance=importance)
    for entry, peft_dir in zip(entries, peft_dirs):
        backend.export_adapter(peft_dir, base_dir, Path(entry["adapter"]), base=base)
    return TaskAdapters(entries, base, reference)
