"""Wires the stages for `build`: source -> HF folder -> compile -> export check -> bench -> manifest.

A finished stage is reused when its inputs' hashes match what it recorded last time."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeft import models, vocab_trim
from edgeft.atomic_io import write_json, write_text
from edgeft.backends.registry import adapter_suffix, get_backend
from edgeft.bench.against import own_file
from edgeft.bench.budgets import LATENCY_TRIES
from edgeft.config import AUTO_QUANT, Target, to_dict
from edgeft.errors import ConfigError, EdgeftError
from edgeft.manifest import sha256, source_entry, write_manifest
from edgeft.progress import status
from edgeft.stages import prepare_source, resolve_for, source_hash
from edgeft.stages import key as _key
from edgeft.stages import reusable as _reusable
from edgeft.stages import stamp as _stamp
from edgeft.sweep import compile_level, quantize_to_fit, weighs_importance

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from edgeft.distill.records import PreparedSplits
    from edgeft.presets import BuildPreset
    from edgeft.tasks.spec import TaskSpec


@dataclass
class BuildResult:
    out_dir: Path
    artifact: Path
    bench: dict | None
    manifest: Path
    student: dict | None = None  # how the student was chosen: the candidates, the choice and why
    importance: dict | None = None  # what the shipped file's rounding was weighed by, when it was


def file_key(path: Path | None) -> str:
    return _key("default-data" if path is None else sha256(Path(path)))


def distill_student(model: str, hf_dir: Path, src_key: str, data: Path | None, preset: "BuildPreset", work: Path,
                    stages: dict) -> tuple[Path, str, "PreparedSplits"]:
    """data -> distill -> merge, each stage reused while its inputs are unchanged.

    Returns the merged HF folder, its key (what later stages hash against) and the data's splits."""
    from edgeft import distill
    from edgeft.data.prepare import REPORT_NAME, prepare, settings_key
    from edgeft.merge import merge

    t = time.perf_counter()
    data_dir = work / "data"
    data_key = _key("data", file_key(data), src_key, settings_key(preset.data))
    reused = _reusable(data_dir, data_key)
    if not reused:
        status("data: cleaning, splitting and letting the teacher write missing answers ...")
        prepare(data, model, data_dir, preset.data)
        _stamp(data_dir, data_key)
    from edgeft.distill.records import open_prepared

    prepared = open_prepared(data_dir)
    if vocab_trim.read_map(hf_dir) is not None:
        # A trimmed teacher: the data was tokenized by the full one (whose answers it holds), so it is
        # renumbered into the trimmed ids the student learns and the runtime sees.
        trimmed_dir, trimmed_key = work / "data-trimmed", _key("data-trimmed", data_key, src_key)
        if not _reusable(trimmed_dir, trimmed_key):
            vocab_trim.renumber_prepared(data_dir, trimmed_dir, hf_dir)
            _stamp(trimmed_dir, trimmed_key)
        prepared, data_key = open_prepared(trimmed_dir), trimmed_key
    stages["data"] = {"reused": reused, "key": data_key, "seconds": round(time.perf_counter() - t, 2),
                      "report": str((data_dir / REPORT_NAME).relative_to(work.parent))}

    t = time.perf_counter()
    distill_dir = work / "distill"
    distill_key = _key("distill", data_key, src_key, preset.distill.to_dict())
    reused = _reusable(distill_dir, distill_key)
    if not reused:
        status("distill: training the student against the teacher's logits ...")
        distill.run(str(hf_dir), prepared, distill_dir, preset.distill)
        _stamp(distill_dir, distill_key)
    summary_path = distill_dir / "distill.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    stages["distill"] = {"reused": reused, "key": distill_key, "seconds": round(time.perf_counter() - t, 2),
                         "config": preset.distill.to_dict(), "eval": summary.get("eval")}

    t = time.perf_counter()
    merged_dir = work / "merged"
    merge_key = _key("merge", distill_key)
    reused = _reusable(merged_dir, merge_key)
    if not reused:
        status("merge: folding the adapters into a dense model ...")
        merge(distill_dir / "adapter", merged_dir)
        _stamp(merged_dir, merge_key)
    stages["merge"] = {"reused": reused, "key": merge_key, "seconds": round(time.perf_counter() - t, 2)}
    return merged_dir, merge_key, prepared


def importance_stage(hf_dir: Path, hf_key: str, target: Target, work: Path, stages: dict, *, train: Path | None = None,
                     data: Path | None = None, preset: str = "demo", levels: "Sequence[str] | None" = None) -> Path | None:
    """The importance file of `hf_dir` (`edgeft.importance`), when the target's quantizer weighs one at
    its level (any candidate level for `--quant auto`, any of `levels` when given). Measured on the
    training split `train` when the build trained; else on the training split's prompts of `data` (the
    shipped prompts by default), chat-templated: the app's own kind of text, and never the text the
    bench scores."""
    from dataclasses import asdict

    from edgeft import importance
    from edgeft.backends.registry import info
    from edgeft.presets import build_preset

    spec = info(target.backend)
    levels = levels or (spec.auto_levels if target.quant == AUTO_QUANT else (target.quant,))
    if not any(spec.uses_importance(target.options, level) for level in levels):
        return None
    t = time.perf_counter()
    folder = work / "importance"
    config = build_preset(preset).data
    text_key = file_key(train) if train is not None else _key("prompts", file_key(data), asdict(config))
    moments = any(spec.uses_moments(target.options, level) for level in levels)  # e.g. GPTQ's rounding
    stage_key = _key("importance", hf_key, text_key, importance.MAX_TOKENS)
    # the moments leave the importance as it is, so a pass that wrote them serves a build that needs none
    reused = _reusable(folder, stage_key) and (not moments or _has_moments(folder))
    if not reused:
        text = train
        if text is None:
            text = folder / "prompts.jsonl"
            from edgeft.data.prepare import write_prompt_records

            if not write_prompt_records(data, hf_dir, text, config):
                stages["importance"] = {"skipped": "the data has no prompts in its training split to measure on"}
                return None
        if not moments:
            (folder / importance.MOMENTS).unlink(missing_ok=True)  # an earlier pass's, of other text or another model
        status("importance: measuring what flows into each weight on the " + ("training split" if train else "data's prompts")
               + (" (with the second moments GPTQ rounds under)" if moments else "") + " ...")
        write_json(folder / "importance.json", importance.collect(hf_dir, text, folder / importance.FILE,
                                                                  moments=folder / importance.MOMENTS if moments else None))
        _stamp(folder, stage_key)
    measured = json.loads((folder / "importance.json").read_text())
    stages["importance"] = {"reused": reused, "key": stage_key, "seconds": round(time.perf_counter() - t, 2),
                            "records": measured["records"], "tokens": measured["tokens"], "tensors": measured["tensors"],
                            "second_moments": moments,  # used by this build's rounding (the folder may hold them anyway)
                            "text": "the training split" if train is not None else
                                    f"the prompts of {Path(data).name if data else 'the shipped prompt set'} "
                                    "(training split, chat template)",
                            "file": str(Path(measured["text"]).relative_to(work.parent))
                                    if Path(measured["text"]).is_relative_to(work.parent) else measured["text"]}
    return folder / importance.FILE


def _has_moments(folder: Path) -> bool:
    """Whether the importance pass stamped in `folder` wrote the second moments, and they are still there."""
    from edgeft import importance

    try:
        said = json.loads((folder / "importance.json").read_text()).get("moments", False)
    except (OSError, ValueError):
        return False
    return bool(said) and (folder / importance.MOMENTS).is_file()


AUTO_STUDENT = "auto"


def build(model: str, target: Target, out_dir: Path, *, run_bench: bool = True, eval_data: Path | None = None,
          distill: bool = False, data: Path | None = None, preset: str = "demo", student: str = AUTO_STUDENT,
          student_layers: int | None = None, trim_vocab: "int | Path | None" = None, tasks: "Sequence[TaskSpec]" = (),
          teacher: bool = True, adapter: str = "lora", nf4_base: bool = False) -> BuildResult:
    """Build `model` for `target` into `out_dir`. With `distill`, the model is the teacher: data ->
    distill -> merge produce the student that is compiled; without, the model is compiled as it is.

    `student` "auto" (with no `student_layers`) distills only as much as the budget needs: see
    `plan_student`. `student_layers` or a student model source force the choice.

    With `tasks`, the compiled model is the shared base and every task gets its own LoRA adapter (a
    learned prefix with `adapter="prefix"`) in the backend's adapter format (`tasks/train.py`), benchmarked on that base (`tasks/bench.py`).

    Every LoRA a build trains (student or task) trains on the fp32 base, or with `nf4_base` on
    QLoRA's NF4 copy of it (presets.py says why fp32 is the default)."""
    started = time.perf_counter()
    if target.quant == AUTO_QUANT and not run_bench:
        raise ConfigError([("quant", "'auto' picks a level by benchmarking it; it cannot be combined with --no-bench")],
                          file=target.source)
    for path in (data, trim_vocab if isinstance(trim_vocab, Path) else None, eval_data):
        if path is not None and not path.is_file():  # before minutes of dequantizing, not after
            raise EdgeftError("no such data file", file=path)
    if data is not None:
        from edgeft.data.prepare import check_records

        check_records(data)
    if eval_data is not None and run_bench:  # read in full now: its ids are a few MB at most
        from edgeft.bench.perplexity import read_eval_data

        read_eval_data(eval_data)
    if trim_vocab is not None and distill and student != AUTO_STUDENT:
        raise ConfigError([("--student", "a given student has the full vocabulary; with --trim-vocab the student is a "
                                         "pruning of the trimmed model (--student auto or --student-layers N)")])
    if tasks:
        _check_tasks(target, trim_vocab, tasks, teacher, adapter)
    source = resolve_for(model, [target.backend])
    backend = get_backend(target.backend)
    backend.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    drop_candidate_leftovers(work)
    stages: dict[str, dict] = {}
    train: Path | None = None  # the training split, when the build trains

    t = time.perf_counter()
    src_key = source_hash(source)
    hf_dir, stages["source"] = prepare_source(source, src_key, work)
    stages["source"]["seconds"] = round(time.perf_counter() - t, 2)
    source_hf = hf_dir  # the model the user gave, as an HF folder: what quality is judged against
    if trim_vocab is not None:
        # The trimmed folder's vocab_map.json names the untrimmed one: the bench scores that model.
        # Then it is the teacher (its distribution is the full one renormalised over the kept ids).
        hf_dir, src_key, stages["trim"] = trim_stage(model, hf_dir, src_key, trim_vocab, preset, work)
        source_hf = hf_dir
        if eval_data is not None:  # token ids of the model you gave: renumbered as the training data is
            eval_data = vocab_trim.renumber_eval_file(eval_data, work / "eval-trimmed.jsonl", hf_dir)
    if distill:
        from edgeft.presets import build_preset

        chosen = plan_student(backend, hf_dir, target, work, src_key, source.name, build_preset(preset, nf4_base=nf4_base),
                              data, student, student_layers, stages)
        if chosen is not None:
            hf_dir, src_key, splits = distill_student(model, hf_dir, src_key, data, chosen, work, stages)
            eval_data, train = eval_data or splits.eval, splits.train
    # the user's own file, when it is in the target's format: its answers through the same runtime go beside the shipped file's
    source_file = own_file(source.path, target.backend)
    # the importance file the quantizer weighs its rounding by: on the training split, else the data's prompts
    weights = importance_stage(hf_dir, src_key, target, work, stages, train=train, data=data, preset=preset)

    t = time.perf_counter()
    if target.quant == AUTO_QUANT:
        kept, stages["auto_quant"] = quantize_to_fit(backend, hf_dir, target, out_dir, work, src_key, source.name,
                                                     eval_data, source_hf, weights, source_file)
        artifact, reference, result = kept.artifact, kept.reference, kept.result
        target = target.with_overrides(quant=artifact.quant)
    else:
        status(f"compiling for {target.name} ({target.backend}, {target.quant}) ...")
        level = compile_level(backend, hf_dir, target, out_dir, work, src_key, source.name, weights)
        artifact, reference, result = level.artifact, level.reference, None
    weighed = weights is not None and weighs_importance(target.backend, target)
    rounding = _rounding_note(weights, target) if weighed else None
    stages["compile"] = {"seconds": round(time.perf_counter() - t, 2), "artifact": artifact.path.name,
                         "backend": artifact.backend, "quant": artifact.quant, "reference": str(reference.path),
                         "importance": _importance_note(weighed, weights, target, rounding)}

    entries: list[dict] = []
    if tasks:
        from edgeft.presets import build_preset
        from edgeft.tasks.train import train_adapters

        t = time.perf_counter()
        trained = train_adapters(model, source_hf, hf_dir, src_key, tasks, build_preset(preset), backend, work, out_dir,
                                 base=artifact, reference=reference, target=target, teacher=teacher, adapter=adapter,
                                 nf4_base=nf4_base, importance=weights if weighed else None)
        entries, artifact, reference = trained.entries, trained.base, trained.reference
        stages["tasks"] = {"seconds": round(time.perf_counter() - t, 2), "base": artifact.path.name, "adapters": entries}
    stages["export_check"] = export_check_stage(hf_dir, artifact, target)  # on the base as shipped

    write_text(out_dir / "target.toml", target.to_toml())
    outputs = [*artifact.package_files(), *(Path(e["adapter"]) for e in entries), out_dir / "target.toml"]
    if run_bench:
        from edgeft.bench.run import bench

        t = time.perf_counter()
        if result is None:  # quant=auto benchmarked the kept level already
            status(f"benchmarking ({target.bench.warmup} warm-up + {target.bench.runs} runs) ...")
            # Timed as `--student auto` timed the candidates: a busy moment must not fail the student it chose.
            result = bench(artifact, target, reference=reference, eval_data=eval_data, source=source_hf, source_file=source_file,
                           latency_tries=LATENCY_TRIES)
        if entries:
            from edgeft.tasks.bench import bench_tasks

            status(f"benchmarking {len(entries)} task adapter(s) on the base ...")
            result["tasks"] = bench_tasks(artifact, reference, target, entries, hf_dir)
            result["pass"] = result["pass"] and result["tasks"]["pass"]
        write_json(out_dir / "bench.json", result)
        outputs.append(out_dir / "bench.json")
        stages["bench"] = {"seconds": round(time.perf_counter() - t, 2)}
    else:
        (out_dir / "bench.json").unlink(missing_ok=True)  # it described an earlier artifact
    stages["total_seconds"] = round(time.perf_counter() - started, 2)
    manifest = write_manifest(
        out_dir,
        source=source_entry(source.label, source.path),
        target={"name": target.name, "source": target.source, **to_dict(target)},
        outputs=outputs,
        stages=stages,
    )
    return BuildResult(out_dir=out_dir, artifact=artifact.path, bench=result, manifest=manifest, student=stages.get("student"),
                       importance={**stages["importance"], "rounding": rounding} if weighed else None)


def _rounding_note(weights: Path, target: Target) -> str | None:
    """What the compile did to the shipped file beyond weighing its rounding (GPTQ), as its backend says."""
    from edgeft.backends.registry import info

    return info(target.backend).rounding_note(target.options, target.quant, weights.parent)


def _importance_note(weighed: bool, weights: Path | None, target: Target, rounding: str | None = None) -> str:
    """One line for the manifest: whether the shipped file's rounding was weighed (and what the compile
    did beyond that, `rounding`: `_rounding_note`), and if not, why."""
    if weighed:
        note = f"rounding weighed by {weights.parent.name}/{weights.name} (mean square inputs; stages.importance: on what text)"
        return note + (f"; {rounding}" if rounding else "")
    from edgeft.backends.registry import info

    if not info(target.backend).uses_importance(target.options, target.quant):
        return f"not used: {target.backend} {target.quant} with these options does not weigh its rounding"
    return "none: no text to measure on (stages.importance says why)"


def _check_tasks(target: Target, trim_vocab: "int | Path | None", tasks: "Sequence[TaskSpec]", teacher: bool,
                 adapter: str = "lora") -> None:
    """Before any stage: a backend without adapters, options task adapters are not wired with, or
    records without a target when nobody may write one."""
    from edgeft.tasks.train import check_targets

    adapter_suffix(target.backend, method=adapter, file=target.source or target.name, place="--method" if adapter != "lora" else "--task")
    problems = []
    if trim_vocab is not None:
        problems.append(("--trim-vocab", "task adapters on a trimmed base are not wired yet"))
    if target.quant == AUTO_QUANT:
        problems.append(("quant", "task adapters are measured on one base level: name it (--quant q8_0, ...)"))
    if problems:
        raise ConfigError(problems, file=target.source)
    for task in tasks:
        check_targets(task, teacher)


def trim_stage(model: str, hf_dir: Path, src_key: str, trim: "int | Path", preset: str, work: Path) -> tuple[Path, str, dict]:
    """`--trim-vocab DATA|N`: DATA goes through the data stage (the teacher writes missing answers, so
    the tokens the model will answer with are kept too); the kept set is the closure of those tokens
    and of every record's own prompt and target."""
    t = time.perf_counter()
    prepared: "Iterable[list[int]]" = ()
    by = "count" if isinstance(trim, int) else str(trim)
    if not isinstance(trim, int):
        from edgeft.data.prepare import prepare, settings_key
        from edgeft.presets import build_preset

        data_dir, config = work / "trim-data", build_preset(preset).data
        data_key = _key("trim-data", file_key(trim), src_key, settings_key(config))
        if not _reusable(data_dir, data_key):
            status(f"trim: preparing {trim} (the teacher writes missing answers) ...")
            prepare(trim, model, data_dir, config)
            _stamp(data_dir, data_key)
        # The teacher's answers (as many as the preset lets it write), and every record's own text.
        prepared = itertools.chain(vocab_trim.prepared_token_ids(data_dir), vocab_trim.data_token_ids(trim, hf_dir, config))
    out = work / "trimmed"
    stage_key = _key("trimmed", src_key, trim if isinstance(trim, int) else data_key)
    reused = _reusable(out, stage_key)
    if not reused:
        tokenizer = vocab_trim.read_tokenizer(hf_dir)
        kept = vocab_trim.kept_for(trim, tokenizer, prepared)
        status(f"trim: keeping {len(kept)} tokens and rewriting the tokenizer, embedding and head ...")
        vocab_trim.trim_model(hf_dir, tokenizer, kept, out)
        _stamp(out, stage_key)
    record = vocab_trim.read_map(out)
    return out, stage_key, {"reused": reused, "key": stage_key, "seconds": round(time.perf_counter() - t, 2),
                            "by": by, "source_vocab": record["source_vocab"],
                            "kept_vocab": record["kept_vocab"], "map": str((out / vocab_trim.MAP_NAME).relative_to(work.parent)),
                            "map_sha256": sha256(out / vocab_trim.MAP_NAME)}


def _layers(hf_dir: Path) -> tuple[int, int]:
    """(decoder layers, the span of their pattern of kinds: `student.layer_period`) of an HF folder, from
    its config.json (no model load)."""
    from edgeft.distill.student import layer_period

    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    return int(config["num_hidden_layers"]), layer_period(config.get("layer_types"))


def plan_student(backend, hf_dir: Path, target: Target, work: Path, src_key: str, name: str, preset: "BuildPreset",
                 data: Path | None, student: str, student_layers: int | None, stages: dict) -> "BuildPreset | None":
    """The preset the data -> distill -> merge stages run with, or None when there is nothing to train.

    Forced (`--student-layers N`, `--student SRC`): that student. Auto: the largest candidate that
    meets the size/latency/memory budget (`student_auto`); a pruned one is distilled; when the source
    fits, the user's own targets (if the data has any) fine-tune it with LoRA, else nothing is learned
    and the source is compiled as it is."""
    from dataclasses import replace

    from edgeft.data.prepare import human_target_count

    if student_layers is not None or student != AUTO_STUDENT:
        if student_layers is not None:  # before the data stage and the teacher load, not after
            from edgeft.distill.student import check_pattern_count

            layers, period = _layers(hf_dir)
            if student_layers > layers:
                raise ConfigError([("--student-layers", f"{student_layers} is more than the model's {layers} layers")])
            check_pattern_count(layers, student_layers, period, place="--student-layers")
        forced = {"student": None if student == AUTO_STUDENT else student, "student_layers": student_layers}
        stages["student"] = {"mode": "distill", "forced": {k: v for k, v in forced.items() if v is not None},
                             "reason": "forced by " + ("--student-layers" if student_layers is not None else "--student")}
        return replace(preset, distill=replace(preset.distill, **forced))
    search = search_student(backend, hf_dir, target, work, src_key, name)
    if search["pruned"]:
        stages["student"] = {"mode": "distill", **search}
        status(f"student auto: {search['reason']}; distilling it")
        return replace(preset, distill=replace(preset.distill, student_layers=search["layers"]))
    humans = human_target_count(data)
    if humans:
        how = "QLoRA (NF4 base)" if preset.distill.quantize_base else "LoRA (fp32 base)"
        stages["student"] = {"mode": "fine-tune", **search, "human_targets": humans,
                             "reason": search["reason"] + f"; the data has {humans} human targets: {how} fine-tuning on them"}
        status(f"student auto: {stages['student']['reason']}")
        # The whole source as the student, plain cross-entropy on the user's targets (alpha 0: no teacher term,
        # so none of the student's own answers either: nothing would score them).
        return replace(preset, distill=replace(preset.distill, keep_layers=tuple(range(search["teacher_layers"])), alpha=0.0,
                                               own_answer_tokens=0))
    stages["student"] = {"mode": "compile", **search,
                         "reason": search["reason"] + "; the data has no human targets, so there is nothing to learn: "
                                                      "compiling the source as it is"}
    status(f"student auto: {stages['student']['reason']}")
    return None


def search_student(backend, hf_dir: Path, target: Target, work: Path, src_key: str, name: str) -> dict:
    """`--student auto`'s measurements: each candidate pruned, compiled at the target's level and
    benchmarked for size, latency and memory only (no training, no quality), largest first.
    Reused while the source and the target are unchanged."""
    from edgeft.bench.run import bench
    from edgeft.bench.machine import OtherLoad
    from edgeft.student_auto import StudentSearch, busy_warning, choose, settle_timing

    stage = work / "student-auto"
    key = _key("student-auto", src_key, to_dict(target))
    if _reusable(stage, key) and (stage / "search.json").is_file():
        cached = json.loads((stage / "search.json").read_text())
        if not cached.get("busy_warning"):  # a search timed on a busy machine is measured again, as its warning asks
            return {**cached, "reused": True}
    measured_at = target
    if target.quant == AUTO_QUANT:
        # `--quant auto` is free to pick any level afterwards, so a candidate fits when it fits at the level
        # with the smallest files: the source is pruned only if no level could make it fit.
        measured_at = target.with_overrides(quant=smallest_level(target.backend))
    n_layers, period = _layers(hf_dir)
    loaded: dict = {}

    def measure(layers: int) -> dict:
        root = stage / f"layers-{layers}"
        try:
            return measure_in(root, layers)
        finally:  # Ctrl-C included: a candidate's files are only ever measured once
            shutil.rmtree(root, ignore_errors=True)

    def measure_in(root: Path, layers: int) -> dict:
        if layers == n_layers:  # the source itself; its conversion is the one the final compile reuses
            cand_hf, cand_key, cand_work = hf_dir, src_key, work
            params = _parameters(hf_dir)
        else:
            cand_hf, cand_key, cand_work = root / "hf", _key("pruned", src_key, layers), root / "work"
            params = _write_pruned(hf_dir, n_layers, layers, cand_hf, loaded)
        status(f"student auto: measuring {layers} of {n_layers} layers ({params / 1e6:.1f} M parameters) ...")
        artifact = compile_level(backend, cand_hf, measured_at, root, cand_work, cand_key, name).artifact

        last: list[float | None] = []

        def timed() -> dict:
            with OtherLoad() as others:
                result = bench(artifact, measured_at, quality=False)
            last.append(others.cores)
            return {**result, "others_cores": others.cores}

        def again() -> dict:
            busy = f"other processes used {last[-1]:.1f} of {os.cpu_count()} cores" if last[-1] is not None else "unknown"
            status(f"student auto: {layers} layers fail only on time; measuring again in case the machine was busy "
                   f"({busy}) ...")
            return timed()

        result = settle_timing(timed(), again, StudentSearch().latency_tries)
        m = result["metrics"]
        return {"parameters": params, "package_mb": m["package_mb"], "ttft_ms_p90": m["ttft_ms_p90"],
                "ms_per_token_p90": m["ms_per_token_p90"], "peak_rss_mb": m["peak_rss_mb"], "budget": result["budget"],
                "tries": result["tries"], "others_cores": result["others_cores"]}

    search = {**choose(n_layers, measure, period=period), "measured_at": measured_at.quant,
              "level_free": measured_at is not target}
    warning = busy_warning(search["candidates"])
    if warning:
        search["busy_warning"] = warning
        search["reason"] += f"; warning: {warning}"
        status(f"student auto: warning: {warning}")
    if measured_at is not target:
        search["reason"] += f" (measured at {measured_at.quant}, the smallest level `--quant auto` may pick)"
    stage.mkdir(parents=True, exist_ok=True)
    write_json(stage / "search.json", search)
    _stamp(stage, key)
    return search


def drop_candidate_leftovers(work: Path) -> None:
    """Remove the student search's candidate folders (a pruned model, its GGUF files: about 800 MB for
    the default model) that a build killed mid-measurement left. Only the search's search.json is
    ever reused, so any `layers-N` folder a new build finds is waste, whatever the new build does."""
    for leftover in (work / "student-auto").glob("layers-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def smallest_level(backend: str) -> str:
    """The `--quant auto` candidate with the fewest bits per weight: the smallest files a source can have."""
    from edgeft.backends.registry import info

    spec = info(backend)
    return min(spec.auto_levels, key=lambda level: spec.bits_per_weight.get(level, math.inf))


def _parameters(hf_dir: Path) -> int:
    """Parameters in an HF folder's safetensors, read from the headers (a tied head is stored once)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            total += sum(math.prod(st.get_slice(name).get_shape()) for name in st.keys())
    return total


def _write_pruned(hf_dir: Path, n_layers: int, layers: int, out: Path, loaded: dict) -> int:
    """The source with `layers` of its layers (the `ends` pick: size and speed do not depend on which)."""
    from transformers import AutoTokenizer

    from edgeft.atomic_io import atomic_dir
    from edgeft.distill import student as student_mod

    if "model" not in loaded:
        loaded["model"] = models.load_model(models.resolve(hf_dir))
    keep = student_mod.ends(n_layers, layers)
    student_mod.check_pattern(loaded["model"], keep)
    pruned = student_mod.drop_layers(loaded["model"], keep)
    with atomic_dir(out) as tmp:
        pruned.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(hf_dir).save_pretrained(tmp)
    return student_mod.parameter_count(pruned)


def export_check_stage(hf_dir: Path, artifact, target: Target) -> dict:
    """The export check (tokenizer, template, EOS, logits against the source), timed, as a stage record."""
    from edgeft.export_check import run_check

    t = time.perf_counter()
    report = run_check(hf_dir, artifact, target)
    report["seconds"] = round(time.perf_counter() - t, 2)
    return report


def clean_work(out_dir: Path) -> None:
    shutil.rmtree(out_dir / "work", ignore_errors=True)
