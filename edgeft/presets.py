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
    # The laptop demo: the teacher writes 96 short answers (about 2 minutes here, sampled), then the
    # student trains QLoRA (NF4 base) for 24 steps x 4 examples: a student visibly moved towards
    # the teacher, not a finished model. NF4 costs little speed on a CPU: bitsandbytes trained at
    # 0.91x the tokens/s of an fp32 base in a paired run (benchmarks/distill_step_paired.py; an
    # earlier 9-vs-202 tok/s figure was load noise). Both presets prune by the measured "block" pick:
    # on SmolLM2 (15 of 30 layers, the full default data with greedy targets, 24 steps) held-out
    # perplexity 566 -> 51, against 3,541 -> 195 for "ends" and ~340,000 before training for even
    # spacing. 24 steps is a demo: there distillation nearly ties plain fine-tuning (56.0 vs 57.5 on
    # the default data); `edgeft distill`'s 150 steps is where it pulls ahead (15.7 vs 17.2).
    "demo": BuildPreset(
        data=DataConfig(synth_max_records=96, synth_max_new_tokens=64, max_length=256),
        distill=replace(DISTILL_PRESETS["demo"], steps=24, grad_accum=1, warmup_steps=3, save_every=8, layer_pick="block"),
    ),
    "full": BuildPreset(data=DataConfig(), distill=replace(DISTILL_PRESETS["full"], layer_pick="block")),
}
DEFAULT_PRESET = "demo"


def build_preset(name: str) -> BuildPreset:
    if name not in PRESETS:
        raise ConfigError([("preset", f"unknown preset {name!r} (known: {', '.join(PRESETS)})")], file="--preset")
    return PRESETS[name]
