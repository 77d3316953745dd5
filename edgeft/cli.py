"""The `edgeft` command line: parse flags, call a stage, print. No logic lives here.

This is the only place that turns errors into exit codes: 2 for bad input, 1 for a failed
budget or check; no traceback for either."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgeft import __version__
from edgeft.errors import EdgeftError

QUANT_HELP = "Override the profile's quantization level (e.g. q4_k_m, q8_0, f16)."


class EdgeftGroup(click.Group):
    """Maps our errors to one line on stderr and an exit code, for every subcommand."""

    def invoke(self, ctx: click.Context):
        from edgeft.errors import BudgetExceeded, ParityError

        try:
            return super().invoke(ctx)
        except EdgeftError as exc:
            click.echo(f"edgeft: error: {exc.one_line()}", err=True)
            ctx.exit(exc.exit_code)
        except (ParityError, BudgetExceeded) as exc:
            click.echo(f"edgeft: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgeft: interrupted; finished stages are kept, no partial file was left under a final name", err=True)
            ctx.exit(130)


@click.group(cls=EdgeftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeft")
@click.option("--quiet", "-q", is_flag=True, help="No progress output; results and errors only.")
def main(quiet: bool) -> None:
    """Distill, quantize, compile and benchmark language models for edge devices.

    \b
    Typical use:
      edgeft build --target gguf                 # default model -> one GGUF file + bench + budget
      edgeft build --model ./my-hf-model --target gguf-q8 --out out/q8
      edgeft targets                             # the shipped target profiles
      edgeft doctor                              # which backends run on this machine
    """
    from edgeft.progress import set_quiet

    set_quiet(quiet)


def _load_target(target: str, quant: str | None, threads: int | None):
    from edgeft.config import load_target

    return load_target(target).with_overrides(quant=quant, threads=threads)


@main.command()
@click.option("--model", "-m", default="default", show_default=True,
              help="Model source: a Hugging Face folder, a .gguf file, or 'default' (SmolLM2-135M-Instruct, embedded).")
@click.option("--target", "-t", default="gguf", show_default=True, help="Target profile: a shipped name (see `edgeft targets`) or a TOML path.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help="Output folder [default: out/<target>].")
@click.option("--quant", default=None, help=QUANT_HELP)
@click.option("--threads", type=int, default=None, help="Override the profile's runtime threads (0 = all cores).")
@click.option("--no-bench", is_flag=True, help="Compile only; skip the benchmark and the budget check.")
@click.option("--json", "as_json", is_flag=True, help="Print the bench result as JSON instead of tables.")
def build(model: str, target: str, out: Path | None, quant: str | None, threads: int | None, no_bench: bool, as_json: bool) -> None:
    """Build a deployable model for a target and check it against the target's budget.

    Converts the model (our own HF -> GGUF converter), quantizes it with llama.cpp's
    quantizer, checks the export still tokenizes and templates like the source, then
    benchmarks it in a separate process. Writes the model file, target.toml, bench.json and
    manifest.json into the output folder. Exit code 1 when a budget fails.
    """
    from edgeft.pipeline import build as run_build

    resolved = _load_target(target, quant, threads)
    out_dir = out or Path("out") / resolved.name
    result = run_build(model, resolved, out_dir, run_bench=not no_bench)
    if result.bench is None:
        click.echo(f"built {result.artifact}")
        return
    _print_bench(result.bench, as_json)
    click.echo(f"\noutput folder: {result.out_dir}  (model: {result.artifact.name}, bench.json, manifest.json)")
    if not result.bench["pass"]:
        sys.exit(1)


def _print_bench(result: dict, as_json: bool) -> None:
    from edgeft.bench.report import budget_table, metrics_table

    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    t = result["target"]
    click.echo(f"{Path(result['artifact']['path']).name}  ({t['backend']} {t['quant']}, {t['threads_used']} threads, "
               f"{t['bench']['prompt_tokens']}-token prompt, {t['bench']['new_tokens']} new tokens, {t['bench']['runs']} runs)")
    click.echo(metrics_table(result))
    click.echo("")
    click.echo(budget_table(result))
    click.echo("")
    click.echo("budget: PASS" if result["pass"] else "budget: FAIL")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets(as_json: bool) -> None:
    """List the shipped target profiles with backend, quantization and budget."""
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


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Which backends work on this machine, and why the others do not."""
    from edgeft.backends.registry import backend_names, entry, get_backend
    from edgeft.bench.report import table

    report = []
    for name in backend_names():
        try:
            get_backend(name).check()
            report.append({"backend": name, "available": True, "reason": entry(name).summary})
        except EdgeftError as exc:
            report.append({"backend": name, "available": False, "reason": exc.reason})
        except ImportError as exc:
            report.append({"backend": name, "available": False, "reason": f"{exc.name} is not installed"})
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(table([[r["backend"], "yes" if r["available"] else "no", r["reason"]] for r in report], ["backend", "available", "details"]))


# ---- distill and merge (issue 4) ----------------------------------------------------------

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
@click.option("--keep-layers", default=None, help="Teacher layers to keep, e.g. 0,2,4 (instead of evenly spaced).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("out/distill"), show_default=True)
@click.option("--preset", default="demo", show_default=True, help="Settings to start from: demo (minutes on a laptop) or full (a serious run).")
@click.option("--steps", type=int, default=None, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=None)
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step.")
@click.option("--lr", type=float, default=None)
@click.option("--warmup-steps", type=int, default=None)
@click.option("--alpha", type=float, default=None, help="Weight of the KD term (1 - alpha weighs cross-entropy).")
@click.option("--temperature", type=float, default=None)
@click.option("--top-k", type=int, default=None, help="Teacher log-probs cached per target token.")
@click.option("--lora-rank", type=int, default=None)
@click.option("--lora-alpha", type=int, default=None)
@click.option("--lora-dropout", type=float, default=None)
@click.option("--target-modules", default=None, help="Comma-separated module names for LoRA [default: all linear layers].")
@click.option("--no-quantize-base", is_flag=True, help="Plain LoRA on a full-precision base instead of NF4 (QLoRA).")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=None)
@click.option("--save-every", type=int, default=None, help="Checkpoint every N steps (0: never).")
@click.option("--seed", type=int, default=None)
@click.option("--quant", default=None, help="Quantization level used for the size estimate (e.g. q4_k_m).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Teacher top-k cache folder [default: OUT/teacher-cache].")
@click.option("--json", "as_json", is_flag=True, help="Print distill.json instead of a summary.")
def distill(teacher, data, student, student_layers, keep_layers, out, preset, steps, batch_size, grad_accum, lr, warmup_steps,
            alpha, temperature, top_k, lora_rank, lora_alpha, lora_dropout, target_modules, no_quantize_base, grad_checkpointing,
            save_every, seed, quant, resume, cache_dir, as_json) -> None:
    """Teach a small student the teacher's distributions (KD + QLoRA); write a LoRA adapter.

    Writes OUT/adapter (PEFT), OUT/student (the base), distill.json, train_log.csv, eval.csv
    and loss.png. Merge the result with `edgeft merge OUT/adapter --out DIR`.
    """
    from edgeft.distill import open_data, run
    from edgeft.distill.config import preset as get_preset

    config = get_preset(preset).with_overrides(
        student=student, student_layers=student_layers, keep_layers=_layer_list(keep_layers), steps=steps, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, alpha=alpha, temperature=temperature, top_k=top_k,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=tuple(m.strip() for m in target_modules.split(",")) if target_modules else None,
        quantize_base=False if no_quantize_base else None, grad_checkpointing=grad_checkpointing, save_every=save_every,
        seed=seed, target_quant=quant)
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
@click.option("--dtype", type=click.Choice(["float16", "float32", "bfloat16"]), default="float16", show_default=True)
def merge(adapter_dir: Path, out: Path, dtype: str) -> None:
    """Merge a LoRA adapter into its (dequantized) base: a dense Hugging Face folder."""
    from edgeft.merge import merge as run_merge

    click.echo(f"merged model: {run_merge(adapter_dir, out, dtype)}")


if __name__ == "__main__":
    main()
