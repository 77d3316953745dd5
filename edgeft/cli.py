"""The `edgeft` command line: parse flags, call a stage, print. No logic lives here.

This is the only place that turns errors into exit codes: 2 for bad input, 1 for a failed
budget or check; no traceback for either."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from edgeft import __version__
from edgeft.config import DEFAULT_TARGET
from edgeft.distill.config import NF4_ENGINES
from edgeft.distill.config import PRESETS as DISTILL_PRESETS
from edgeft.errors import ConfigError, EdgeftError

QUANT_HELP = "Override the profile's quantization level (e.g. q4_k_m, q8_0, f16), or 'auto': the smallest level that meets every budget."


def _one_usage_line(exc: click.UsageError) -> None:
    """A bad flag is bad input like any other: one line and exit 2, where click prints usage, a hint
    and the error on three. A group called bare (`edgeft data`) still shows its help, as click does."""
    if type(exc).__name__ == "NoArgsIsHelpError" or exc.ctx is None:
        raise exc
    path = exc.ctx.command_path
    click.echo(f"edgeft: error: {path}: {' '.join(exc.format_message().split()).rstrip('.')} ('{path} -h' for help)",
               err=True)
    raise click.exceptions.Exit(2)


class EdgeftGroup(click.Group):
    """Maps our errors to one line on stderr and an exit code, for every subcommand."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # `edgeft --bogus`: the group's own flags
            _one_usage_line(exc)

    def invoke(self, ctx: click.Context):
        import os

        from edgeft.child import ChildFailed, NativeCrash
        from edgeft.errors import BudgetExceeded, ParityError

        try:
            return super().invoke(ctx)
        except EdgeftError as exc:
            click.echo(f"edgeft: error: {exc.one_line()}", err=True)
            ctx.exit(exc.exit_code)
        except (ParityError, BudgetExceeded) as exc:
            click.echo(f"edgeft: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (NativeCrash, ChildFailed) as exc:
            click.echo(f"edgeft: internal error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgeft: interrupted; finished stages are kept for a rerun and no partial file was left under a final "
                       "name (a build's folder is complete once it has its manifest.json)", err=True)
            ctx.exit(130)
        except click.UsageError as exc:
            _one_usage_line(exc)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug of ours: one line and exit 1; the traceback on request
            if os.environ.get("EDGEFT_TRACEBACK"):
                raise
            click.echo(f"edgeft: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
                       "(set EDGEFT_TRACEBACK=1 to see where)", err=True)
            ctx.exit(1)


@click.group(cls=EdgeftGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeft")
@click.option("--quiet", "-q", is_flag=True, help="No progress output; results and errors only.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Distill, quantize, compile and benchmark language models for edge devices.

    \b
    Typical use:
      edgeft build --target gguf                 # default model -> one GGUF file + bench + budget
      edgeft build --model ./my-hf-model --target gguf-q8 --out out/q8
      edgeft bench new/model-q8_0.gguf --against old/model-q8_0.gguf   # CI: did latency, size or quality regress?
      edgeft compare --target gguf               # every quantization level: one table, one plot, the smallest that fits
      edgeft targets                             # the shipped target profiles
      edgeft doctor                              # which backends run on this machine
    """
    from edgeft.progress import mute_import_noise, set_quiet

    if ctx.invoked_subcommand is None:  # `edgeft` alone asks what it can do: the help, and success (click 8.2 exits 2)
        click.echo(ctx.get_help())
        ctx.exit(0)
    set_quiet(quiet)
    mute_import_noise()


def _parse_trim(value: str | None) -> int | Path | None:
    from edgeft.vocab_trim import parse_trim

    return None if value is None else parse_trim(value)


def _only_with(given: bool, needs: str, *params: str) -> None:
    """Refuse options that apply only beside another one, when given without it: silently ignored
    they would let a user believe a gate ran that did not."""
    from click.core import ParameterSource

    if given:
        return
    ctx = click.get_current_context()
    for name in params:
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            flag = "--" + name.replace("_", "-")
            raise EdgeftError(f"applies only with {needs}", place=flag)


def _writable(folder: bool = False, **paths: Path | None) -> None:
    """Every output path given, checked before any work (`atomic_io.check_writable`)."""
    from edgeft.atomic_io import check_writable

    for option, path in paths.items():
        if path is not None:
            check_writable(path, option, folder=folder)


def _load_target(target: str, quant: str | None, threads: int | None):
    from edgeft.config import load_target

    return load_target(target).with_overrides(quant=quant, threads=threads)


@main.command()
@click.option("--model", "-m", default="default", show_default=True,
              help="Model source: a Hugging Face folder, a .gguf file, 'default' (SmolLM2-135M-Instruct, embedded) or 'gemma3-270m' (Gemma 3 270M Q4_K_M, installed by make setup).")
@click.option("--target", "-t", default=DEFAULT_TARGET, show_default=True, help="Target profile: a shipped name (see `edgeft targets`) or a TOML path.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help="Output folder [default: out/<target>].")
@click.option("--quant", default=None, help=QUANT_HELP)
@click.option("--threads", type=int, default=None, help="Override the profile's runtime threads (0 = all cores).")
@click.option("--no-bench", is_flag=True, help="Compile only; skip the benchmark and the budget check.")
@click.option("--no-distill", is_flag=True, help="Compile the model as it is, without data, distillation and merge.")
@click.option("--student", default="auto", show_default=True,
              help="'auto': the largest pruning of the model (the model itself included) that meets the size, latency "
                   "and memory budget, measured before any training; or a model source to distill into.")
@click.option("--student-layers", type=int, default=None, help="Force a student of N of the model's layers (the measured 'block' pick).")
@click.option("--trim-vocab", default=None, metavar="DATA|N", callback=lambda _ctx, _param, value: _parse_trim(value),
              help="Keep only the tokens a task uses: those DATA (a data file; the teacher writes missing answers) "
                   "tokenizes to, the merges that build them, and every byte and special token; or the first N by "
                   "merge order. Rewrites tokenizer, embedding and head; with distillation the trimmed model is the "
                   "teacher. Quality is still judged against the full model.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Task data (JSONL/JSON/CSV/Parquet) for distillation [default: the shipped prompts; the teacher writes answers].")
@click.option("--preset", type=click.Choice(["demo", "full"]), default="demo", show_default=True,
              help="Data and distillation settings: 'demo' takes minutes on a laptop CPU, 'full' is a serious run.")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None,
              help="Prepared JSONL (`input_ids`, the model's own ids: `edgeft data prepare`) scored for perplexity "
                   "[default: the data's held-out split, else a shipped text].")
@click.option("--task", "tasks", multiple=True, metavar="NAME=FILE",
              help="A task of a multi-task package (repeatable): the model built is the shared base, and each task "
                   "gets its own LoRA adapter trained on FILE, shipped in the backend's adapter format and benched on "
                   "that base. Examples ship in edgeft/assets/tasks (intent, extract, reply).")
@click.option("--tasks", "tasks_file", type=click.Path(path_type=Path), default=None, metavar="FILE.toml",
              help="A build file whose [tasks] table names the tasks: NAME = \"FILE\", or NAME = { data = \"FILE\", "
                   "modules = \"attention\" } (paths relative to it); combines with --task.")
@click.option("--task-modules", multiple=True, metavar="NAME=KIND",
              help="Which layers a task's adapter trains: attention, mlp or all [default: all].")
@click.option("--no-teacher", is_flag=True,
              help="Task adapters learn their records' targets alone (SFT), not the teacher's logits beside them; "
                   "every record must then have a target.")
@click.option("--method", "adapter_method", type=click.Choice(["lora", "prefix"]), default="lora", show_default=True,
              help="How each task adapts the base: 'lora' (low-rank weight updates, every backend with adapters), or "
                   "'prefix' (peft prefix tuning: 20 learned keys and values per layer, shipped as the initial KV "
                   "cache the ONNX runner seeds; llama.cpp has no prefix adapters).")
@click.option("--nf4-base", is_flag=True,
              help="Train every LoRA of the build (the student's, the tasks') on a 4-bit NF4 copy of its base (QLoRA), "
                   "not the fp32 base: less training memory, but NF4's rounding is merged into the shipped weights "
                   "(benchmarks/README.md measures what that costs).")
@click.option("--json", "as_json", is_flag=True, help="Print the bench result as JSON instead of tables.")
def build(model: str, target: str, out: Path | None, quant: str | None, threads: int | None, no_bench: bool,
          no_distill: bool, student: str, student_layers: int | None, trim_vocab: int | Path | None, data: Path | None, preset: str,
          eval_data: Path | None, tasks: tuple[str, ...], tasks_file: Path | None, task_modules: tuple[str, ...],
          no_teacher: bool, adapter_method: str, nf4_base: bool, as_json: bool) -> None:
    """Build a deployable model for a target and check it against the target's budget.

    \b
    --model is the source (the teacher when a student is distilled):
      student  --student auto: the source and prunings of it by layer count are compiled and benched
               for size, latency and memory (no training); the largest that fits is the student
      data     clean and split --data (or the shipped prompts); the teacher writes missing answers
      distill  a pruned student learns the teacher's logits (LoRA on its fp32 base; --nf4-base: QLoRA);
               when the source fits, your data's own targets fine-tune it, and data without targets
               means no training
      merge    the adapters are folded into a dense model
    Then, for every build:
      compile  our HF -> GGUF converter + llama.cpp's quantizer (or the target's backend)
      check    the export still tokenizes, templates and answers like its source
      bench    latency, memory, size and quality in a separate process, against the budget

    Writes the model, target.toml, bench.json and manifest.json into the output folder; finished
    stages under work/ are reused while their inputs are unchanged. Exit code 0 when every budget
    passes, 1 when one fails (the table says which; the files are still written), 2 on bad input.
    """
    from edgeft.pipeline import build as run_build
    from edgeft.tasks.spec import parse_tasks, read_task_file

    if tasks_file is not None:
        from_file, modules_from_file = read_task_file(tasks_file)
        tasks, task_modules = (*from_file, *tasks), (*modules_from_file, *task_modules)
    specs = parse_tasks(tasks, task_modules)
    if (task_modules or no_teacher or adapter_method != "lora") and not specs:
        raise ConfigError([("--task-modules/--no-teacher/--method", "go with --task NAME=FILE")])
    if task_modules and adapter_method == "prefix":
        raise ConfigError([("--task-modules", "a prefix adapts every layer's keys and values, not chosen modules")])
    if student_layers is not None and student_layers < 1:
        raise ConfigError([("--student-layers", f"must be at least 1, got {student_layers}")])
    resolved = _load_target(target, quant, threads)
    out_dir = out or Path("out") / resolved.name
    _writable(folder=True, **{"--out": out_dir})
    result = run_build(model, resolved, out_dir, run_bench=not no_bench, eval_data=eval_data, distill=not no_distill,
                       data=data, preset=preset, student=student, student_layers=student_layers, trim_vocab=trim_vocab,
                       tasks=specs, teacher=not no_teacher, adapter=adapter_method, nf4_base=nf4_base)
    if result.student is not None and not as_json:
        _print_student(result.student)
    if result.importance is not None and not as_json:
        rounding = f"; {result.importance['rounding']}" if result.importance.get("rounding") else ""
        click.echo(f"quantization: {result.artifact.name} rounded with an importance matrix (each weight's inputs, "
                   f"mean square over {result.importance['tokens']:,} tokens of {result.importance['text']}){rounding}\n")
    if result.bench is None:
        click.echo(f"built {result.artifact}")
        return
    _print_bench(result.bench, as_json)
    if not as_json:
        _print_levers(result)
    # With --json, stdout is the JSON document alone, so a machine can parse it whole.
    click.echo(f"\noutput folder: {result.out_dir}  (model: {result.artifact.name}, bench.json, manifest.json)", err=as_json)
    if not result.bench["pass"]:
        sys.exit(1)


def _print_student(student: dict) -> None:
    from edgeft.bench.report import student_table

    click.echo(student_table(student))
    click.echo("")


def _print_levers(result) -> None:
    """When quality against the source fails after training, say which lever would move it; when a
    timing line failed on every run while other processes kept the machine busy, say that first."""
    from edgeft.bench.budgets import TIMED_BUDGETS
    from edgeft.student_auto import BUSY_CORES

    timing = [b["budget"] for b in result.bench["budget"] if b["budget"] in TIMED_BUDGETS and b["status"] == "FAIL"]
    others = [t["others_cores"] for t in result.bench.get("latency_tries") or [] if t.get("others_cores") is not None]
    if timing and others and min(others) > BUSY_CORES:
        click.echo(f"timing: FAIL ({', '.join(timing)}) on each of {len(others)} runs while other processes kept at least "
                   f"{min(others):.1f} cores busy: the machine's time, perhaps not the model's; measure again on a quiet "
                   f"machine (`edgeft bench {result.out_dir}`: the build's file, profile, source and reference).")
    failed = [b["budget"] for b in result.bench["budget"]
              if b["budget"] in ("ppl_vs_source_pct", "answer_ppl_vs_source_pct") and b["status"] == "FAIL"]
    mode = (result.student or {}).get("mode")
    if failed and mode in ("distill", "fine-tune"):
        pinned = result.student.get("pruned") and not result.student.get("level_free")  # pruned at the one level named
        levels = (" or `--quant auto`, which measures the whole source at every level before pruning it (a lower level "
                  "with an importance matrix can keep more of the source than pruning and a short distillation),"
                  if pinned else "")
        busy = ("First, build again on a quiet machine: the student was pruned on timings taken while other processes "
                "kept the machine busy (the student line above). " if result.student.get("busy_warning") else "")
        click.echo(f"quality against the teacher: FAIL ({', '.join(failed)}). {busy}Levers: more training (`--preset full`, or "
                   f"more steps with `edgeft distill --steps`),{levels} or a looser size/latency budget so that a larger "
                   "student fits.")
    elif failed:
        click.echo(f"quality against the source: FAIL ({', '.join(failed)}). Levers: {_higher_level(result.bench['artifact'])}"
                   "or a looser limit in the profile's [budget].")
    if "answer_ppl_vs_source_pct" in failed and (note := _own_file_note(result.bench)):
        click.echo(note)


def _own_file_note(bench: dict) -> str | None:
    """When the answer line fails on prompts where the source's own file, in the same runtime, is past
    the line too: the user's model says as much there with nothing of ours in between."""
    from edgeft.bench.report import pct

    line = next((b for b in bench["budget"] if b["budget"] == "answer_ppl_vs_source_pct"), None)
    rows = [r for r in bench.get("answers") or [] if "source_file_ppl_vs_source_pct" in r]
    if line is None or not rows:
        return None
    past = [r for r in rows if r["ppl_vs_source_pct"] > line["limit"]]
    own_past = [r for r in past if r["source_file_ppl_vs_source_pct"] > line["limit"]]
    if not own_past:
        return None
    said = "; ".join(f"\"{r['prompt']}\" {pct(r['source_file_ppl_vs_source_pct'])}" for r in own_past)
    return (f"answers: on {len(own_past)} of the {len(past)} prompts past the {line['limit']:g} % line, the source's own file, "
            f"run by the same runtime, is past it too ({said}): there the model you gave fails this line in this runtime "
            "with nothing of edgeft's in between.")


def _higher_level(artifact: dict) -> str:
    """The quantization lever in the shipped file's own backend's level names: the next level up, if any."""
    from edgeft.backends.registry import info

    levels = list(info(artifact["backend"]).auto_levels)
    quant = artifact["quant"]
    if quant in levels and quant != levels[-1]:
        return f"a higher quantization level (`--quant {levels[levels.index(quant) + 1]}`, or `--quant auto`), "
    return "`--quant auto` (it tries every level), "


def _print_bench(result: dict, as_json: bool) -> None:
    from edgeft.bench.report import (answers_block, budget_table, budget_verdict, latency_note, metrics_table,
                                     source_quality)

    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    t = result["target"]
    click.echo(f"{Path(result['artifact']['path']).name}  ({t['backend']} {t['quant']}, {t['threads_used']} threads, "
               f"{t['bench']['prompt_tokens']}-token prompt, {t['bench']['new_tokens']} new tokens, {t['bench']['runs']} runs)")
    click.echo(source_quality(result))
    if result.get("answers"):
        click.echo(answers_block(result))
    click.echo("")
    click.echo(metrics_table(result))
    note = latency_note(result)
    if note:
        click.echo(note)
    click.echo("")
    click.echo(budget_table(result))
    click.echo("")
    if result.get("tasks"):
        from edgeft.tasks.bench import table as task_table

        click.echo(task_table(result["tasks"]))
        click.echo("")
    click.echo(budget_verdict(result))


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def targets(ctx: click.Context, as_json: bool) -> None:
    """List the shipped target profiles with backend, quantization and budget.

    `edgeft targets validate FILE...` checks your own profiles."""
    if ctx.invoked_subcommand is not None:
        return
    from dataclasses import asdict

    from edgeft.bench.report import table
    from edgeft.config import load_target, shipped_targets

    loaded = [load_target(name) for name in shipped_targets()]
    if as_json:
        click.echo(json.dumps([{"name": t.name, "backend": t.backend, "quant": t.quant, "threads": t.threads,
                                "budget": {k: v for k, v in asdict(t.budget).items() if v is not None}} for t in loaded], indent=2))
        return
    rows = []
    for t in loaded:
        budget = ", ".join(f"{k}={v:g}" for k, v in asdict(t.budget).items() if v is not None) or "-"
        rows.append([t.name, t.backend, t.quant, str(t.threads or "all"), budget])
    click.echo(table(rows, ["target", "backend", "quant", "threads", "budget"]))


@targets.command("validate")
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file: name, ok, and the problems.")
@click.pass_context
def targets_validate(ctx: click.Context, files: tuple[str, ...], as_json: bool) -> None:
    """Check target profiles (names or TOML paths); every problem of every file is reported."""
    from edgeft.config import load_target

    as_json = as_json or bool(ctx.parent and ctx.parent.params.get("as_json"))  # `targets --json validate` too
    results = []
    for name in files:
        try:
            load_target(name)
            results.append({"target": name, "ok": True, "problems": []})
            if not as_json:
                click.echo(f"{name}: ok")
        except EdgeftError as exc:
            problems = [{"key": key, "reason": why} for key, why in getattr(exc, "problems", [("", exc.reason)])]
            results.append({"target": name, "ok": False, "file": exc.file, "problems": problems})
            if not as_json:
                click.echo(f"edgeft: error: {exc.one_line()}", err=True)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if not all(r["ok"] for r in results):
        sys.exit(2)


@main.command("compile")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--target", "-t", default=DEFAULT_TARGET, show_default=True, help="Target profile name or TOML path.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--quant", default=None, help="Override the profile's quantization level (e.g. q4_k_m, q8_0, f16).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Prompts (JSONL, JSON, CSV or Parquet, as `build --data`) to measure the importance matrix on, for levels "
                   "below 8 bits: your app's own kind of text. Default: the shipped prompts.")
def compile_cmd(model_dir: Path, target: str, out: Path, quant: str | None, data: Path | None) -> None:
    """Compile a model (e.g. a folder from `edgeft merge`) for a target, without benchmarking.

    The build's compile stage itself: the backend's unquantized reference, the level (rounded with an
    importance matrix from the prompts of --data where the level weighs one), the export check against
    the source, target.toml and manifest.json in OUT."""
    from edgeft.config import AUTO_QUANT
    from edgeft.pipeline import build as run_build

    resolved = _load_target(target, quant, None)
    if resolved.quant == AUTO_QUANT:
        raise ConfigError([("--quant", "'auto' picks a level by benchmarking each; compile benchmarks nothing: "
                                       "`edgeft build --quant auto`, or name a level")])
    _writable(folder=True, **{"--out": out})
    result = run_build(str(model_dir), resolved, out, run_bench=False, distill=False, data=data)
    click.echo(str(result.artifact))


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
def verify(out_dir: Path) -> None:
    """Re-hash a build's outputs against its manifest.json; exit 1 if any file changed or is missing."""
    from edgeft.manifest import verify as verify_manifest

    problems = verify_manifest(out_dir)
    for line in problems:
        click.echo(f"edgeft: {line}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{out_dir}: every output matches manifest.json")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Which backends work on this machine, and why the others do not.

    For GGUF it also shows llama.cpp's instruction sets, the flags `make setup` built it with, and
    runs the smoke probe (a 64-token prompt at q4_0, q8_0 and q4_k_m, each in a child process).
    Exit code 1 when an installed runtime fails its probe."""
    from edgeft.backends.registry import backend_names, get_backend, info

    report = []
    for name in backend_names():
        try:
            backend = get_backend(name)
            backend.check()
            report.append({"backend": name, "available": True, "reason": info(name).summary})
            report[-1]["details"] = details = backend.details()  # runtime versions, devices, providers, probes
            if not details.get("ok", True):  # installed, but it faults on this host
                report[-1].update(available=False, reason=details.get("advice", "its self-test failed"))
        except EdgeftError as exc:
            report.append({"backend": name, "available": False, "reason": exc.reason})
        except ImportError as exc:
            report.append({"backend": name, "available": False, "reason": f"{exc.name} is not installed"})
    broken = any(not (r.get("details") or {}).get("ok", True) for r in report)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_doctor(report)
    if broken:  # a runtime that is installed but faults here is a broken install, not a missing option
        sys.exit(1)


def _print_doctor(report: list[dict]) -> None:
    from edgeft.bench.report import table

    click.echo(table([[r["backend"], "yes" if r["available"] else "no", r["reason"]] for r in report], ["backend", "available", "details"]))
    for r in report:
        for key, value in (r.get("details") or {}).items():
            if key in ("smoke", "ok", "advice"):  # for --json; smoke_probe is the probe's line, advice the reason
                continue
            if isinstance(value, dict):
                shown = ", ".join(f"{k} {v}" for k, v in value.items())
            elif isinstance(value, str):
                shown = value
            else:
                shown = ", ".join(map(str, value)) or "-"
            click.echo(f"{r['backend']} {key.replace('_', ' ')}: {shown}")


# ---- data stage -------------------------------------------------------------------------------

def _data_config(**flags):
    """Flags given on the command line override DataConfig; a flag left out keeps its one default there."""
    from dataclasses import replace

    from edgeft.data.prepare import DataConfig
    from edgeft.errors import ConfigError

    fields = flags.pop("field", ())
    overrides = {k: v for k, v in flags.items() if v is not None and v is not False}
    if fields:
        pairs = []
        for item in fields:
            dst, sep, src = item.partition("=")
            if not sep or not dst.strip() or not src.strip():
                raise ConfigError([("--field", f"expected STANDARD=COLUMN (e.g. input=question), got {item!r}")])
            pairs.append((dst.strip(), src.strip()))
        overrides["field_map"] = tuple(pairs)
    config = replace(DataConfig(), **overrides)
    with _problems_as_flags():
        config.validate()
    return config


def _data_options(fn):
    for decorator in reversed([
        click.option("--model", "-m", default="default", show_default=True,
                     help="Model whose tokenizer (and, for prepare, teacher) is used: HF folder, .gguf, 'default' or 'gemma3-270m'."),
        click.option("--field", multiple=True, metavar="STANDARD=COLUMN",
                     help="Map a column to a standard field, e.g. --field input=question --field target=answer."),
        click.option("--max-length", type=int, default=None, help="Tokens per example after templating [default: 512]."),
        click.option("--eval-fraction", type=float, default=None, help="Share of records in the eval split [default: 0.1]."),
        click.option("--augment-ratio", type=float, default=None, help="Most augmented records per original in train [default: 1/3]."),
        click.option("--strict", is_flag=True, default=False, help="Any bad record ends the run with exit code 2."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]):
        fn = decorator(fn)
    return fn


@main.group()
def data() -> None:
    """Read, validate, clean, split, synthesize and tokenize task data."""


@data.command("inspect")
@click.argument("file", type=click.Path(path_type=Path), required=False)
@_data_options
def data_inspect(file: Path | None, model: str, field: tuple[str, ...], max_length: int | None, eval_fraction: float | None,
                 augment_ratio: float | None, strict: bool, as_json: bool) -> None:
    """Counts, fields found, token-length histogram, duplicates and what cleaning would remove.

    FILE is JSONL, JSON, CSV or Parquet; without it the shipped default prompts are inspected.
    Nothing is written and no model is run (only its tokenizer is loaded)."""
    from edgeft.data.prepare import inspect_data
    from edgeft.data.report import histogram_text

    config = _data_config(field=field, max_length=max_length, eval_fraction=eval_fraction, augment_ratio=augment_ratio, strict=strict)
    info = inspect_data(file, model, config)
    if as_json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    c = info["counts"]
    click.echo(f"{info['data_file']['path']} ({info['data_file']['format']})")
    click.echo(f"records: {c['read']} read, {c['rejected']} bad, {c['kept']} kept after cleaning "
               f"({c['with_target']} with target, {c['without_target']} for the teacher); split {c['train']} train / {c['eval']} eval")
    click.echo(f"shapes: {', '.join(f'{k}={v}' for k, v in info['shapes'].items())}")
    click.echo(f"fields found: {', '.join(info['fields_found'])}")
    if info["fields_unused"]:
        from edgeft.data.prepare import unused_note

        click.echo(unused_note(info["fields_unused"]))
    click.echo(f"task types: {', '.join(f'{k}={v}' for k, v in info['task_types'].items())}")
    click.echo(f"domains: {', '.join(f'{k}={v}' for k, v in info['domains'].items())}")
    click.echo("cleaning would remove:")
    for step in info["steps"]:
        if step["removed"]:
            reasons = ", ".join(f"{k} ({v})" for k, v in step["reasons"].items())
            first = "; ".join(f"{e['place']}: {e['reason']}" for e in step["examples"][:3])
            click.echo(f"  {step['step']}: {step['removed']} - {reasons}; first: {first}")
        elif step["step"] == "normalize":
            click.echo(f"  normalize: changed text in {step['changed']} records (removes none)")
    t = info["tokens"]
    for name in ("prompt", "target"):
        st = t[name]
        if st["count"]:
            click.echo(f"{name} tokens (min {st['min']}, p50 {st['p50']}, p90 {st['p90']}, max {st['max']}, n={st['count']}):")
            click.echo(histogram_text(t[f"{name}_histogram"]))


@data.command("prepare")
@click.argument("file", type=click.Path(path_type=Path), required=False)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output folder for train/eval JSONL and data_report.json.")
@_data_options
@click.option("--layout", type=click.Choice(["pad", "pack", "none"]), default=None, help="Pad each example, pack several per row, or neither [default: pad].")
@click.option("--max-new-tokens", "synth_max_new_tokens", type=int, default=None, help="Teacher: most tokens per target [default: 128].")
@click.option("--temperature", "synth_temperature", type=float, default=None, help="Teacher: sampling temperature (seeded, reproducible), 0 = greedy [default: 1.0].")
@click.option("--synth-max-records", type=int, default=None, help="Teacher: most targets generated per run [default: all].")
@click.option("--synth-threads", type=int, default=None, help="Teacher: llama.cpp threads, 0 = the cores no other process is busy on [default: 0].")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Teacher-target cache [default: ~/.cache/edgeft].")
def data_prepare(file: Path | None, out: Path, model: str, field: tuple[str, ...], max_length: int | None, eval_fraction: float | None,
                 augment_ratio: float | None, strict: bool, as_json: bool, layout: str | None, synth_max_new_tokens: int | None,
                 synth_temperature: float | None, synth_max_records: int | None, synth_threads: int | None,
                 cache_dir: Path | None) -> None:
    """Write the cleaned, split, tokenized dataset and the data report into --out.

    Records without a target get one from the teacher (--model), cached on disk. FILE is JSONL,
    JSON, CSV or Parquet; without it the shipped default prompts are used. `build` and `distill`
    call the same code."""
    from edgeft.data.prepare import prepare

    _writable(folder=True, **{"--out": out})
    config = _data_config(field=field, max_length=max_length, eval_fraction=eval_fraction, augment_ratio=augment_ratio, strict=strict,
                          layout=layout, synth_max_new_tokens=synth_max_new_tokens, synth_temperature=synth_temperature,
                          synth_max_records=synth_max_records, synth_threads=synth_threads, cache_dir=cache_dir)
    result = prepare(file, model, out, config)
    report = json.loads(result.report.read_text(encoding="utf-8"))
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    c = report["counts"]
    if result.rejected:
        click.echo(f"skipped {result.rejected} bad records (--strict makes them an error); first: " + "; ".join(result.bad_examples))
    click.echo(f"{c['read']} read, {c['rejected']} bad, {c['removed']} removed by cleaning; "
               f"{c['train_examples']} train / {c['eval_examples']} eval examples ({c['teacher_targets']} targets by the teacher)")
    for step in report["steps"][1:]:
        if step["removed"]:
            click.echo(f"  {step['step']}: {step['removed']} removed - " + ", ".join(f"{k} ({v})" for k, v in step["reasons"].items()))
    syn = next(s for s in report["steps"] if s["step"] == "synthesis")
    if syn.get("generated") or syn.get("cached"):
        click.echo(f"  teacher: {syn['generated']} generated ({syn['generated_tokens']} tokens, {syn['seconds']} s), {syn['cached']} from cache"
                   + (f"; {syn['cut_at_budget']} cut at --max-new-tokens, trained without an end" if syn.get("cut_at_budget") else ""))
    click.echo(f"wrote {result.train}, {result.eval}, {result.report}")


# --- bench and compare (issue 6) -------------------------------------------------------------


@main.command("bench")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--target", "-t", default=DEFAULT_TARGET, show_default=True, help="Target profile: runtime settings, [budget] and [regression].")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write every number to this bench.json.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None, help="An earlier bench.json to gate against (exit 1 on regression).")
@click.option("--tolerance", default=None, help="Allowed worsening per gated metric, e.g. 10% [default: the profile's regression.tolerance_pct].")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="The unquantized export (f16/f32): perplexity increase, KL and top-1 from quantization alone.")
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="The HF folder of the model it was built from (the teacher when distilled): quality against it, "
                   "and both models' answers to a few chat prompts side by side.")
@click.option("--source-file", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="With --source: that model's own file in ARTIFACT's format (e.g. the .gguf you gave a build). Its "
                   "answers through the same runtime are shown beside the shipped file's: what your model says there "
                   "with nothing of edgeft's in between.")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None,
              help="Held-out JSONL with `input_ids` to score instead of the shipped evaluation text.")
@click.option("--summary", type=click.Path(path_type=Path), default=None, help="Append a Markdown report (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Write a JUnit XML report: one test case per budget and gated metric.")
@click.option("--threads", type=int, default=None, help="Override the profile's runtime threads (0 = all cores).")
@click.option("--against", "against_path", type=click.Path(path_type=Path), default=None,
              help="A/B gate: the old artifact (file, folder or build folder), benchmarked in this job, interleaved with "
                   "ARTIFACT; verdicts from a 95% interval of the paired per-round ratios.")
@click.option("--rounds", type=int, default=20, show_default=True, help="--against: paired rounds (with --adaptive, the most).")
@click.option("--max-seconds", type=float, default=None, help="--against: stop the rounds after this many seconds.")
@click.option("--adaptive", is_flag=True, help="--against: stop as soon as every metric is decided (pass or fail).")
@click.option("--inconclusive-exit", type=click.Choice(["3", "0", "1"]), default="3", show_default=True,
              help="--against: exit code when a metric is inconclusive (its interval straddles the tolerance).")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="--against: write a PNG of the paired ratios per metric.")
@click.option("--seed", type=int, default=0, show_default=True, help="--against: seed of the per-round A/B order.")
@click.option("--allow-fingerprint-mismatch", is_flag=True,
              help="--baseline: compare with a baseline measured on another CPU, runtime build or library versions (warns).")
@click.option("--adapter", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Measure with this task adapter active (a build's adapters/NAME.gguf); refused when it was exported "
                   "for another base.")
def bench_command(artifact: Path, target: str, json_out: Path | None, baseline: Path | None, tolerance: str | None,
                  reference: Path | None, source: Path | None, source_file: Path | None, eval_data: Path | None,
                  summary: Path | None,
                  junit: Path | None, threads: int | None, against_path: Path | None, rounds: int, max_seconds: float | None,
                  adaptive: bool, inconclusive_exit: str, plot: Path | None, seed: int, allow_fingerprint_mismatch: bool,
                  adapter: Path | None) -> None:
    """Benchmark a built artifact: latency, memory, size, quality; budgets and the CI gate.

    \b
    Examples:
      edgeft bench out/demo                       # a build folder: the file it shipped, against its budget
      edgeft bench NEW.gguf --against OLD.gguf    # the A/B gate: both in this job, interleaved
      edgeft bench OLD.gguf --json base.json      # store a baseline ...
      edgeft bench NEW.gguf --baseline base.json  # ... and gate a later build against it

    \b
    Two gates:
      --against OLD   both artifacts in this job, in two warm processes that each serve both; a round
                      runs each side once in each process, order drawn per round;
                      each timing metric's verdict from a 95% distribution-free interval of the paired
                      ratios: FAIL only when the whole interval is past the tolerance, PASS when it is
                      within, INCONCLUSIVE (exit 3, new) when it straddles it, with the rounds needed.
      --baseline B    an earlier bench.json; refused when it was measured on another machine or runtime
                      build. A stored baseline cannot tell drift from regression: prefer --against.

    Exit code 0 when every budget and gated metric passes, 1 when one fails, 3 when the A/B gate is
    inconclusive (see --inconclusive-exit), 2 on bad input (missing or corrupt artifact, malformed
    baseline, mismatched metrics or fingerprints).
    """
    from click.core import ParameterSource

    from edgeft.atomic_io import write_json, write_text
    from edgeft.bench import summary as reports
    from edgeft.bench.against import is_build_folder
    from edgeft.bench.baseline import parse_tolerance
    from edgeft.bench.report import gate_table
    from edgeft.bench.run import bench_file

    _only_with(against_path is not None, "--against OLD", "rounds", "max_seconds", "adaptive", "inconclusive_exit", "plot", "seed")
    _only_with(baseline is not None, "--baseline FILE", "allow_fingerprint_mismatch")
    _only_with(baseline is not None or against_path is not None, "--baseline FILE or --against OLD", "tolerance")
    _only_with(source is not None or is_build_folder(artifact) or against_path is not None, "--source", "source_file")
    _writable(**{"--json": json_out, "--summary": summary, "--junit": junit, "--plot": plot})
    if (is_build_folder(artifact) and (artifact / "target.toml").is_file()
            and click.get_current_context().get_parameter_source("target") != ParameterSource.COMMANDLINE):
        target = str(artifact / "target.toml")  # a build folder: its own profile, unless one is named
    resolved = _load_target(target, None, threads)
    tolerance_pct = parse_tolerance(tolerance) if tolerance is not None else None
    if against_path is not None:
        if baseline is not None:
            raise EdgeftError("--against and --baseline are two gates; give one", place="--against")
        if adapter is not None:
            raise EdgeftError("--against compares two bases; bench an adapter without it", place="--adapter")
        for flag, given in (("--source", source), ("--source-file", source_file), ("--reference", reference)):
            if given is not None:
                raise EdgeftError("--against compares the two files with each other; bench one file alone to judge it "
                                  "against a source or reference", place=flag)
        _bench_against(artifact, against_path, resolved, tolerance_pct, rounds, max_seconds, adaptive, int(inconclusive_exit),
                       plot, seed, eval_data, json_out, summary, junit)
        return
    result = bench_file(artifact, resolved, reference=reference, eval_data=eval_data, baseline=baseline,
                        tolerance_pct=tolerance_pct, source=source, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
                        adapter=adapter, source_file=source_file)
    gate = result.get("regression")
    if json_out is not None:
        write_json(json_out, result)
    if summary is not None:
        reports.append_markdown(summary, reports.markdown(result, gate["lines"] if gate else None))
    if junit is not None:
        write_text(junit, reports.junit(result, gate["lines"] if gate else None))
    _print_bench(result, False)
    if gate:
        click.echo("")
        for difference in gate.get("fingerprint_differences") or []:
            click.echo(f"edgeft: warning: the baseline was measured on another machine or runtime build ({difference}); "
                       "its timings are not comparable with these", err=True)
        click.echo(gate_table(gate["lines"]))
        click.echo(gate["note"])
        click.echo("regression gate: PASS" if gate["pass"] else "regression gate: FAIL")
    if not result["pass"] or (gate and not gate["pass"]):
        sys.exit(1)


def _bench_against(artifact: Path, old: Path, target, tolerance_pct: float | None, rounds: int, max_seconds: float | None,
                   adaptive: bool, inconclusive_exit: int, plot: Path | None, seed: int, eval_data: Path | None,
                   json_out: Path | None, summary: Path | None, junit: Path | None) -> None:
    from edgeft.atomic_io import write_json, write_text
    from edgeft.bench import summary as reports
    from edgeft.bench.ab import MIN_ROUNDS
    from edgeft.bench.against import against, resolve_artifact
    from edgeft.bench.report import table
    from edgeft.bench.summary import shown
    from edgeft.progress import status

    if rounds < MIN_ROUNDS:  # before any progress line: bad input is one line
        raise EdgeftError(f"at least {MIN_ROUNDS} rounds are needed for a 95% interval, got {rounds}", place="--rounds")
    new_art = resolve_artifact(artifact, target.backend)
    old_art = resolve_artifact(old, target.backend)
    tol = tolerance_pct if tolerance_pct is not None else target.regression.tolerance_pct
    pair = f"new {shown(new_art.path)} against old {shown(old_art.path)}"
    status(f"A/B: {pair} (B and A), up to {rounds} interleaved rounds ...")
    result = against(new_art, old_art, target, tolerance_pct=tol, rounds=rounds, max_seconds=max_seconds, adaptive=adaptive,
                     seed=seed, eval_data=eval_data,
                     progress=lambda i, n: status(f"A/B: round {i} of at most {n}") if i % 5 == 0 else None)
    if json_out is not None:
        write_json(json_out, result)
    if summary is not None:
        reports.append_markdown(summary, reports.against_markdown(result))
    if junit is not None:
        write_text(junit, reports.against_junit(result))
    if plot is not None:
        from edgeft.bench.plot import against_plot

        against_plot(result, plot)
    rows = [[v["metric"], f"{v['median_ratio']:.3f}", f"{v['ci_low']:.3f} - {v['ci_high']:.3f}", f"{1 + v['tolerance_pct'] / 100:.2f}",
             v["status"] + (f" (~{v['rounds_to_decide']} rounds)" if v["status"] == "INCONCLUSIVE" and v["rounds_to_decide"] else "")]
            for v in result["verdicts"]]
    rows += [[f"{s['metric']} (once)", f"{s['new'] / s['old']:.3f}" if s["old"] else "-", "", f"{1 + s['tolerance_pct'] / 100:.2f}",
              s["status"]] for s in result["static"]]
    click.echo(table(rows, ["metric", "new/old (>1 worse)", "95% CI", "limit", "verdict"]))
    click.echo(f"A/B gate, {pair} ({len(result['rounds'])} paired rounds, {result['seconds']:.0f} s): {result['verdict']}")
    if result["verdict"] == "FAIL":
        sys.exit(1)
    if result["verdict"] == "INCONCLUSIVE" and inconclusive_exit:
        sys.exit(inconclusive_exit)


@main.command("compare")
@click.option("--model", "-m", default="default", show_default=True, help="Model source: a Hugging Face folder, a .gguf file, 'default' or 'gemma3-270m'.")
@click.option("--target", "-t", default=DEFAULT_TARGET, show_default=True, help="Target profile (its budget decides the recommendation).")
@click.option("--models", default=None, help="Several model sources, comma-separated (e.g. default,gemma3-270m), in one "
              "table and plot; each is measured against its own source.")
@click.option("--targets", default=None, help="Several target profiles, comma-separated (e.g. gguf,onnx), compared in one table and plot.")
@click.option("--quant", default=None, help="Levels to compare, comma-separated, e.g. f16,q8_0,q4_k_m,q4_0; with several "
              "--targets each takes the levels of its own backend (q4_k_m,int4). [default: one target: every level "
              "`--quant auto` weighs, plus the profile's; several targets: each profile's own level]")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("out/compare"), show_default=True, help="Output folder.")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None, help="Held-out JSONL with `input_ids` to score.")
@click.option("--threads", type=int, default=None, help="Override the profile's runtime threads (0 = all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print compare.json instead of the table.")
def compare_command(model: str, models: str | None, target: str, targets: str | None, quant: str | None, out: Path,
                    eval_data: Path | None, threads: int | None, as_json: bool) -> None:
    """Build several quantization levels from one conversion and benchmark them side by side.

    Writes compare.json, compare.md and compare.png into the output folder and names the
    smallest level that meets every budget. Exit code 1 when none does.
    """
    from edgeft.bench.compare import COLUMN_NOTE, compare, importance_footnote, own_file_footnotes, parse_levels, table_rows
    from edgeft.bench.report import table

    names = [n.strip() for n in (targets or target).split(",") if n.strip()]
    loaded = [_load_target(n, None, threads) for n in names]
    levels = parse_levels(quant, loaded)
    _writable(folder=True, **{"--out": out})
    several = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if several and model != "default":
        raise EdgeftError("--model and --models name the models twice; give one", place="--models")
    result = compare(several or model, loaded, levels, out, eval_data=eval_data)
    if as_json:
        click.echo(json.dumps(result.data, indent=2))
    else:
        header, rows = table_rows(result.data)
        click.echo(table(rows, header))
        click.echo(COLUMN_NOTE)
        footnote = importance_footnote(result.data)
        for line in ([footnote] if footnote else []) + own_file_footnotes(result.data):
            click.echo(line)
        click.echo("")
        click.echo(result.data["verdict"])
        click.echo(f"wrote {result.json_path}, {result.md_path}, {result.png_path}")
    if result.data["recommended"] is None:
        sys.exit(1)


# ---- distill and merge (issue 4) ----------------------------------------------------------

@contextlib.contextmanager
def _problems_as_flags():
    """A config's problems named by the current command's flags (`steps` -> `--steps`): the user typed
    the flag, not the config key."""
    try:
        yield
    except ConfigError as exc:
        ctx = click.get_current_context()
        flags = {p.name: p.opts[0] for p in ctx.command.params if isinstance(p, click.Option)}
        flags.update(target_quant="--quant", field_map="--field")
        raise ConfigError([(flags.get(key, key), why) for key, why in exc.problems]) from None


def _layer_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer numbers, got {text!r}") from None


@main.command()
@click.option("--teacher", default="default", show_default=True, help="Teacher model source (HF folder, .gguf file, 'default').")
@click.option("--data", "data", type=click.Path(path_type=Path), required=True,
              help="A prepared data folder (train.jsonl, eval.jsonl) or a raw data file for the data stage.")
@click.option("--student", default=None, help="Student model source with the teacher's tokenizer.")
@click.option("--student-layers", type=int, default=None, help="Make the student from the teacher by keeping N decoder layers [default: half].")
@click.option("--keep-layers", default=None, help="Teacher layers to keep, e.g. 0,2,4 (instead of --layer-pick).")
@click.option("--layer-pick", type=click.Choice(["even", "ends", "block"]), default=None,
              help="Which layers --student-layers keeps: evenly spaced; the first and last halves (ends); or "
                   "block: drop the contiguous block that costs least on a few training records (seconds per "
                   "candidate; on SmolLM2 a student 8x closer to the teacher than ends) [default: even; build presets: block].")
@click.option("--stand-in/--no-stand-in", "stand_in", default=None,
              help="A pruned student's dropped layers replaced by a linear map fitted on the teacher's states over "
                   "the training records and folded into the MLP before them (no new weights; kept only when it lowers "
                   "the calibration NLL) [default: on].")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("out/distill"), show_default=True,
              help="Output folder: the adapter, the student, distill.json, the training log and plot.")
@click.option("--preset", type=click.Choice(list(DISTILL_PRESETS)), default="demo", show_default=True,
              help="Settings to start from (every option below left out is the preset's): demo (minutes on a laptop) "
                   "or full (a serious run).")
@click.option("--steps", type=int, default=None, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=None, help="Records per micro-batch [default: the preset's].")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step.")
@click.option("--lr", type=float, default=None, help="Peak learning rate of the adapters [default: the preset's].")
@click.option("--warmup-steps", type=int, default=None, help="Steps of linear warm-up to --lr [default: the preset's].")
@click.option("--alpha", type=float, default=None, help="Weight of the KD term (1 - alpha weighs cross-entropy).")
@click.option("--hidden-weight", type=float, default=None,
              help="Weight of a hidden-state term: 1 - cosine between each student layer's output and the teacher's at "
                   "the layer it was copied from (runs the teacher live; a pruned student only) [default: 0, off].")
@click.option("--own-answers", "own_answer_tokens", type=int, default=None, metavar="TOKENS",
              help="On-policy distillation: before training, the student answers every training prompt greedily (up to "
                   "TOKENS tokens), and those answers train too, scored by the teacher's logits alone, so the student "
                   "learns what the teacher would say from where its own answers go. Needs --alpha 1.0 [default: 0, off; "
                   "build's demo preset: 64].")
@click.option("--temperature", type=float, default=None, help="Softens both distributions in the KD term [default: the preset's].")
@click.option("--top-k", type=int, default=None, help="Teacher log-probs cached per target token.")
@click.option("--lora-rank", type=int, default=None, help="Rank of each LoRA adapter [default: the preset's].")
@click.option("--lora-alpha", type=int, default=None, help="LoRA scale numerator (the update is alpha/rank x BA) [default: the preset's].")
@click.option("--lora-dropout", type=float, default=None, help="Dropout on the adapters' input [default: the preset's].")
@click.option("--target-modules", default=None, help="Comma-separated module names for LoRA [default: all linear layers].")
@click.option("--no-quantize-base", is_flag=True, help="Plain LoRA on a full-precision base instead of NF4 (QLoRA).")
@click.option("--nf4-engine", type=click.Choice(NF4_ENGINES), default=None,
              help="Who stores the frozen NF4 base (not with --no-quantize-base): bitsandbytes, torchao, or auto "
                   "(bitsandbytes when installed, else torchao) [default: auto]. Both use QLoRA's 4-bit NormalFloat in "
                   "64-weight blocks; their weights differ slightly, so merge reuses the engine training used. "
                   "Training speed on a 2-core CPU (paired steps, SmolLM2 student): bitsandbytes about 0.9x and "
                   "torchao about 0.8x the tokens/s of an fp32 base; torchao is pure PyTorch (no compiled kernels).")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=None,
              help="Recompute activations in the backward pass: less memory, more time [default: the preset's].")
@click.option("--save-every", type=int, default=None, help="Checkpoint every N steps (0: never).")
@click.option("--seed", type=int, default=None, help="Seeds batches and adapter initialisation [default: the preset's].")
@click.option("--quant", default=None, help="Quantization level used for the size estimate (e.g. q4_k_m).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Teacher top-k cache folder [default: OUT/teacher-cache].")
@click.option("--continue", "continue_from", type=click.Path(path_type=Path), default=None, metavar="ADAPTER_DIR",
              help="Keep training this adapter (OUT/adapter of an earlier run) on --data, on its own base.")
@click.option("--ewc", "ewc_lambda", type=float, default=None, metavar="LAMBDA",
              help="With --continue: add LAMBDA * sum F (theta - theta*)^2, the Fisher F and the parameters theta* "
                   "stored with the adapter, so what the old task relied on stays put (fixed for the run).")
@click.option("--replay", "replay_ratio", type=float, default=None, metavar="RATIO",
              help="With --continue: mix RATIO old training records into the new ones per new record (e.g. 0.25).")
@click.option("--fisher-records", type=int, default=None, metavar="N",
              help="After training, estimate the diagonal Fisher on N training records and store it with the adapter, "
                   "for a later --continue --ewc.")
@click.option("--json", "as_json", is_flag=True, help="Print distill.json instead of a summary.")
def distill(teacher, data, student, student_layers, keep_layers, layer_pick, stand_in, out, preset, steps, batch_size, grad_accum, lr,
            warmup_steps, alpha, hidden_weight, own_answer_tokens, temperature, top_k, lora_rank, lora_alpha, lora_dropout, target_modules,
            no_quantize_base, nf4_engine, grad_checkpointing, save_every, seed, quant, resume, cache_dir, continue_from,
            ewc_lambda, replay_ratio, fisher_records, as_json) -> None:
    """Teach a small student the teacher's distributions (KD + QLoRA); write a LoRA adapter.

    Writes OUT/adapter (PEFT), OUT/student (the base), distill.json, train_log.csv, eval.csv
    and loss.png. Merge the result with `edgeft merge OUT/adapter --out DIR`.
    """
    from edgeft.distill import open_data, run
    from edgeft.distill.config import preset as get_preset

    with _problems_as_flags():
        config = get_preset(preset).with_overrides(
            student=student, student_layers=student_layers, keep_layers=_layer_list(keep_layers),
            layer_pick=layer_pick, stand_in=stand_in, steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
            warmup_steps=warmup_steps, alpha=alpha, hidden_weight=hidden_weight, own_answer_tokens=own_answer_tokens,
            temperature=temperature, top_k=top_k,
            lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            target_modules=tuple(m.strip() for m in target_modules.split(",")) if target_modules else None,
            quantize_base=False if no_quantize_base else None, nf4_engine=nf4_engine,
            grad_checkpointing=grad_checkpointing, save_every=save_every, seed=seed, target_quant=quant,
            continue_from=str(continue_from) if continue_from else None, ewc_lambda=ewc_lambda,
            replay_ratio=replay_ratio, fisher_records=fisher_records)
    if continue_from is not None:
        from edgeft.merge import read_adapter_meta

        read_adapter_meta(continue_from)  # one line before any work if it is not an adapter folder
    _writable(folder=True, **{"--out": out})
    adapter = run(teacher, open_data(data, teacher, out), out, config, resume=resume, cache_dir=cache_dir)
    report = json.loads((out / "distill.json").read_text(encoding="utf-8"))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from edgeft.bench.report import table

    rows = [[name, f"{e['perplexity']:.3f}", "-" if e["top1_agreement"] is None else f"{e['top1_agreement']:.1%}"]
            for name, e in report["eval"].items()]
    click.echo(table(rows, ["model", "eval perplexity", "top-1 agreement"]))
    tps = report.get("train_tok_per_s")
    click.echo(f"\ntrained {config.steps} steps" + (f" at {tps:.0f} tokens/s" if tps else "") + f"; adapter: {adapter}")


@main.command()
@click.argument("adapter_dir", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Folder for the dense merged model.")
@click.option("--dtype", type=click.Choice(["float16", "float32", "bfloat16"]), default="float16", show_default=True,
              help="Precision of the merged weights (the adapters are merged in float32 first).")
def merge(adapter_dir: Path, out: Path, dtype: str) -> None:
    """Merge a LoRA adapter into its (dequantized) base: a dense Hugging Face folder."""
    from edgeft.merge import merge as run_merge

    _writable(folder=True, **{"--out": out})
    click.echo(f"merged model: {run_merge(adapter_dir, out, dtype)}")


if __name__ == "__main__":
    main()
