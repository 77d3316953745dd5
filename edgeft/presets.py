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
    # LoRA for 48 steps x 4 examples (about two passes over them): a student moved well towards the
    # teacher inside the tight demo's ten minutes, not a finished model. Which student: `--student
    # auto` picks the largest pruning that fits the budget, and its layers are the measured "block"
    # pick. benchmarks/README.md ("--student auto and the two demo builds") has what this budget
    # reaches on the default model and which levers moved it.
    "demo": BuildPreset(
        data=DataConfig(synth_max_records=96, synth_max_new_tokens=64, max_length=256),
        distill=replace(DISTILL_PRESETS["demo"], steps=48, grad_accum=1, warmup_steps=3, save_every=8, layer_pick="block",
                        lr=1e-3, quantize_base=False, target_quant=None, alpha=1.0, own_answer_tokens=64),
    ),
    "full": BuildPreset(data=DataConfig(), distill=replace(DISTILL_PRESETS["full"], layer_pick="block", quantize_base=False,
                                                           target_quant=None)),
}
# `target_quant=None`: a build prints no size estimate before training. `--student auto` has
# measured the student's file already, and an estimate from bits per weight misses what a target's
# level does on a given model (llama.cpp's K levels fall back on widths that are not multiples of
# 256; the token table has its own type): it said "about 80 MB" for an 89.1 MB file.
# Why a build trains on the fp32 base (`--nf4-base` for QLoRA's NF4 one): the shipped file is the
# merged weights, quantized once more at the target's level. Merging onto an NF4 base puts NF4's
# rounding in those weights first, and on the tight demo that rounding alone cost the student more
# than 24 steps of training won back (benchmarks/README.md, "NF4 or fp32 base"). An NF4 base
# saves training memory, which a model of this size does not need on a laptop.
DEFAULT_PRESET = "demo"


def build_preset(name: str, *, nf4_base: bool = False) -> BuildPreset:
    """The named preset; `nf4_base` trains on QLoRA's NF4 copy of the base instead of the fp32 one."""
    if name not in PRESETS:
        raise ConfigError([("preset", f"unknown preset {name!r} (known: {', '.join(PRESETS)})")], file="--preset")
    preset = PRESETS[name]
    return replace(preset, distill=replace(preset.distill, quantize_base=True)) if nf4_base else preset
