"""`edgeft build --preset`: the data and distillation settings a build uses, named.

The demo preset is sized for a laptop: the teacher writes a capped number of short answers and
the student trains for the distillation defaults' few dozen steps. `full` is a serious run."""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgeft.data.prepare import DataConfig
from edgeft.distill.config import PRESETS as DISTILL_PRESETS
from edgeft.distill.config import DistillConfig
from edgeft.errors import ConfigError


@dataclass(frozen=True)
class BuildPreset:
    data: DataConfig
    distill: DistillConfig


PRESETS: dict[str, BuildPreset] = {
    # The laptop demo: the teacher writes 96 short answers (cached on disk), then the student trains
    # QLoRA (NF4 base) for 24 steps x 4 examples: a student visibly moved towards the teacher, not a
    # finished model. Which student: `--student auto` picks the largest pruning that fits the budget,
    # and its layers are the measured "block" pick. benchmarks/README.md ("--student auto and the
    # tight demo") has what this budget reaches on the default model and which levers move it.
    "demo": BuildPreset(
        data=DataConfig(synth_max_records=96, synth_max_new_tokens=64, max_length=256),
        distill=replace(DISTILL_PRESETS["demo"], steps=24, grad_accum=1, warmup_steps=3, save_every=8, layer_pick="block",
                        lr=2e-3),
    ),
    "full": BuildPreset(data=DataConfig(), distill=replace(DISTILL_PRESETS["full"], layer_pick="block")),
}
DEFAULT_PRESET = "demo"


def build_preset(name: str) -> BuildPreset:
    if name not in PRESETS:
        raise ConfigError([("preset", f"unknown preset {name!r} (known: {', '.join(PRESETS)})")], file="--preset")
    return PRESETS[name]
