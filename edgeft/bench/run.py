"""`bench`: every metric of one artifact under one target, as one JSON-ready dict."""

from __future__ import annotations

import time
from pathlib import Path

from edgeft import __version__
from edgeft.backends.base import Artifact
from edgeft.bench import budgets, latency, machine
from edgeft.config import Target, to_dict

SCHEMA_VERSION = 1
MB = 1_000_000  # package sizes in decimal megabytes, as app stores report them


def bench(artifact: Artifact, target: Target, *, reference: Artifact | None = None, eval_data: Path | None = None,
          quality: bool = True, source: Path | None = None, adapter: Path | None = None, latency_tries: int = 1,
          source_file: Artifact | None = None) -> dict:
    """Latency and memory in one child process, then quality in another: perplexity; KL, top-1 and the
    perplexity increase against `reference` (the unquantized export: quantization loss alone) and
    against `source` (the HF folder of the model the user gave), with both models' greedy answers to
    a few chat prompts side by side. `source_file`: the source's own file in the artifact's format,
    whose answers through the same runtime are shown beside them. `latency_tries`: see `settled_latency`."""
    active = {"adapter": str(adapter)} if adapter is not None else {}  # a task adapter active in both processes
    raw, tries = settled_latency(artifact, target, latency_tries, **active)
    metrics, per_run = latency.latency_metrics(raw)
    evaluation = None
    answers = None
    if quality:
        q = latency.run_worker(
            artifact, target, mode="quality", **active,
            reference=reference.to_json() if reference else None,
            source=str(source) if source else None,
            source_file=source_file.to_json() if source_file is not None and source else None,
            eval_data=str(eval_data) if eval_data else None,
        )
        evaluation = {**q["eval"], "tokens_scored": q["quality"].pop("tokens_scored"), "windows": q["quality"].pop("windows")}
        metrics.update(q["quality"])
        answers = q.get("answers")
    metrics["package_mb"] = artifact.package_bytes() / MB
    metrics["model_mb"] = artifact.path.stat().st_size / MB if artifact.path.is_file() else metrics["package_mb"]
    lines = budgets.check(metrics, target.budget)
    return {
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "artifact": {
            "path": str(artifact.path),
            "kind": artifact.backend,
            "backend": artifact.backend,
            "quant": artifact.quant,
            "package_bytes": artifact.package_bytes(),
            "files": [str(p) for p in artifact.package_files()],
            "adapter": str(adapter) if adapter is not None else None,
        },
        "target": {"name": target.name, **to_dict(target), "threads_used": target.resolved_threads()},
        "machine": {**machine.describe(target.resolved_threads()), "runtime": raw.get("runtime")},
        "versions": {"edgeft": __version__, **raw.get("versions", {})},
        "metrics": metrics,
        "runtime_counters": latency.runtime_counters(raw),
        "eval": evaluation,  # what quality was measured on; None when it was not
        "answers": answers,  # greedy answers of the source and the artifact to CHAT_PROMPTS; None without a source
        "runs": per_run,
        "latency_tries": tries,  # each latency run's timing p90s and other processes' cores; `kept` marks the one reported
        "budget": [line.to_json() for line in lines],
        "pass": budgets.all_pass(lines),
    }


def settled_latency(artifact: Artifact, target: Target, tries: int, **active) -> tuple[dict, list[dict]]:
    """The latency run, run again while a timing budget line fails, at most `tries` runs in all
    (`latency.least_disturbed`); the run kept is reported whole.

    `--student auto` settles each candidate's timing this way (`student_auto.settle_timing`); a
    build's final bench that measured once could fail the student the search had just timed well
    inside the line. Every run's figures stay in bench.json (`latency_tries`)."""
    from edgeft.bench.machine import OtherLoad
    from edgeft.progress import status

    def measure() -> dict:
        with OtherLoad() as others:
            raw = latency.run_worker(artifact, target, **active)
        metrics, _ = latency.latency_metrics(raw)
        return {"raw": raw, "excess": budgets.timing_excess(metrics, target.budget), "ttft_ms_p90": metrics["ttft_ms_p90"],
                "ms_per_token_p90": metrics["ms_per_token_p90"], "others_cores": others.cores}

    def again(last: dict, n: int) -> None:
        busy = "" if last["others_cores"] is None else f"; other processes used {last['others_cores']:.1f} cores"
        status(f"bench: a timing line failed (TTFT p90 {last['ttft_ms_p90']:.0f} ms, {last['ms_per_token_p90']:.1f} "
               f"ms/token{busy}); measuring again in case the machine was busy ({n} of {tries}) ...")

    runs, kept = latency.least_disturbed(measure, lambda r: r["excess"], tries, again)
    record = [{"ttft_ms_p90": r["ttft_ms_p90"], "ms_per_token_p90": r["ms_per_token_p90"], "others_cores": r["others_cores"],
               "kept": i == kept} for i, r in enumerate(runs)]
    return runs[kept]["raw"], record


def measured_inputs(result: dict) -> dict[str, Path]:
    """What a bench result was measured with, where still on disk: its unquantized reference, the source
    model it judged quality against and its evaluation tokens (a JSONL split; the shipped text is the
    default anyway). Why: `edgeft bench out/demo` measures again what the build measured, and a gate
    against a stored baseline compares like with like."""
    ev = result.get("eval") if isinstance(result, dict) else None
    if not isinstance(ev, dict):
        return {}
    found = {"reference": ev.get("reference"), "source": ev.get("source_model"), "eval_data": ev.get("source"),
             "source_file": ev.get("source_file")}
    if not str(found["eval_data"] or "").endswith(".jsonl"):
        found["eval_data"] = None
    return {k: Path(v) for k, v in found.items() if isinstance(v, str) and v and Path(v).exists()}


def build_inputs(folder: Path) -> dict[str, Path]:
    """`measured_inputs` of a build folder's own bench.json; none when it has none."""
    import json

    try:
        return measured_inputs(json.loads((Path(folder) / "bench.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _build_folder_inputs(folder: Path, old: dict | None, target: Target, reference: Path | None, source: Path | None,
                         eval_data: Path | None, source_file: Path | None) -> tuple[Path | None, ...]:
    """A build folder's reference, source and evaluation tokens where none is given: with a baseline,
    those it was measured with (like with like), else those the build's own bench measured with; one
    status line says what was taken."""
    from edgeft.progress import status

    found = measured_inputs(old) if old is not None else build_inputs(folder)
    given = {"reference": reference, "source": source, "eval_data": eval_data, "source_file": source_file}
    taken = {k: v for k, v in found.items() if given[k] is None}
    own_profile = target.source is not None and Path(target.source) == folder / "target.toml"
    if taken or own_profile:
        status(f"bench: {folder} is a build folder: " + ", ".join(
            (["its target.toml"] if own_profile else []) + [f"--{k.replace('_', '-')} {v}" for k, v in taken.items()])
            + (" (as the baseline was measured)" if old is not None else " (as its own bench measured)"))
    return tuple(given[k] or taken.get(k) for k in given)


def bench_file(artifact_path: Path, target: Target, *, reference: Path | None = None, eval_data: Path | None = None,
               adapter: Path | None = None,
               baseline: Path | None = None, tolerance_pct: float | None = None, source: Path | None = None,
               allow_fingerprint_mismatch: bool = False, source_file: Path | None = None) -> dict:
    """`edgeft bench ARTIFACT`: bench one built artifact; with a baseline, gate against it; with `source`
    (the HF folder it was built from), its quality against that model.

    The baseline is read first, so a malformed one fails before minutes of benchmarking."""
    from edgeft.backends.registry import info
    from edgeft.bench import baseline as gate
    from edgeft.errors import ArtifactError

    from edgeft.bench.against import identified, is_build_folder, own_file, resolve_artifact

    old = gate.load_bench(baseline) if baseline is not None else None
    if old is not None:
        gate.precheck(old, to_dict(target), machine.describe(target.resolved_threads()), baseline_file=baseline,
                      allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    if is_build_folder(Path(artifact_path)):
        reference, source, eval_data, source_file = _build_folder_inputs(Path(artifact_path), old, target, reference, source,
                                                                         eval_data, source_file)
    for path, what in ((artifact_path, "artifact"), (reference, "reference"), (source, "source model"), (adapter, "adapter"),
                       (source_file, "source file")):
        if path is not None and not Path(path).exists():
            raise ArtifactError(f"no such file (the {what})", file=path)
    artifact = resolve_artifact(Path(artifact_path), target.backend)  # a build folder names its artifact
    if artifact.backend == target.backend and artifact.quant in info(target.backend).quant_levels:
        target = target.with_overrides(quant=artifact.quant)  # the report names the file's own level, not the profile's
    # A reference of any backend serves (it is scored through the Runner interface); each backend says what it made.
    ref = identified(Path(reference), target.backend) if reference is not None else None
    own = own_file(Path(source_file), artifact.backend, place="--source-file") if source_file is not None else None
    if adapter is not None:
        from edgeft.backends.registry import adapter_suffix

        adapter_suffix(artifact.backend, file=adapter, place="--adapter")
        check_prefix_room(Path(adapter), target, artifact.backend)
    result = bench(artifact, target, reference=ref, eval_data=eval_data, source=source, adapter=adapter, source_file=own)
    if old is not None:
        differences = gate.fingerprint_differences(old, result)
        if differences and not allow_fingerprint_mismatch:
            raise gate.BenchFileError("the baseline was measured on another machine, runtime build or library versions ("
                                      + "; ".join(differences) + "): its timings are not comparable; bench both with "
                                      "--against, or pass --allow-fingerprint-mismatch", file=baseline, place="machine")
        lines = gate.gate(old, result, target.regression, baseline_file=baseline, tolerance_pct=tolerance_pct)
        result["regression"] = {"baseline": str(baseline), "lines": [line.to_json() for line in lines], "pass": gate.passed(lines),
                                "fingerprint_differences": differences, "note": gate.STORED_BASELINE_NOTE}
    return result


def check_prefix_room(adapter: Path, target: Target, backend: str) -> None:
    """A prefix adapter takes cache positions before every sequence: the timed prompt and answer must
    still fit the profile's context with it, said before minutes of benchmarking, not as a crash."""
    from edgeft.backends.registry import get_backend
    from edgeft.errors import ConfigError

    prefix = get_backend(backend).adapter_positions(adapter)
    b = target.bench
    if prefix and b.prompt_tokens + b.new_tokens + prefix > b.context:
        raise ConfigError([("bench", f"the prefix adapter {adapter.name} takes {prefix} positions before every sequence: "
                                     f"prompt_tokens {b.prompt_tokens} + new_tokens {b.new_tokens} + {prefix} exceed context "
                                     f"{b.context}; lower prompt_tokens or new_tokens, or raise context")],
                          file=target.source)
