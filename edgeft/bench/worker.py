"""Runs one benchmark in a child process, so peak RSS is the model's process alone, not the harness.

Invoked as `python -m edgeft.bench.worker REQUEST.json RESULT.json`; the parent (`latency.py`)
writes the request and reads the result. Imports stay light: no torch in this process.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    exec, so a child started by a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def use_adapter(backend, runner, artifact, adapter: str | None) -> None:
    """`bench --adapter FILE`: the artifact is measured with that task adapter active, once the backend
    has checked it belongs to this very base."""
    if adapter is None:
        return
    backend.check_adapter(Path(adapter), artifact)
    runner.use_adapter(Path(adapter))


def run(request: dict) -> dict:
    if request.get("mode") == "quality":
        return run_quality(request)
    if request.get("mode") == "tasks":
        from edgeft.tasks.measure import measure

        return measure(request)
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import get_backend
    from edgeft.bench.prompt import prompt_ids
    from edgeft.config import load_target

    target = load_target(request["target"])
    artifact = Artifact.from_json(request["artifact"])
    backend = get_backend(artifact.backend)
    rss_before_load = peak_rss_mb()
    runner = backend.load(artifact, target)
    use_adapter(backend, runner, artifact, request.get("adapter"))
    try:
        ids = prompt_ids(runner.tokenize, target.bench.prompt_tokens)
        runs = []
        perf = []
        for i in range(target.bench.warmup + target.bench.runs):
            runner.reset_perf()
            gen = runner.generate(ids, target.bench.new_tokens)
            if i < target.bench.warmup:
                continue
            runs.append({"token_times": gen.token_times, "n_tokens": len(gen.tokens)})
            counters = runner.perf_counters()
            if counters is not None:
                perf.append(counters)
        versions = runner.library_versions()
        runtime = runner.fingerprint()
    finally:
        runner.close()
    return {
        "runs": runs,
        "perf_counters": perf,
        "prompt_tokens": len(ids),
        "rss_before_load_mb": rss_before_load,
        "peak_rss_mb": peak_rss_mb(),
        "versions": versions,
        "runtime": runtime,
    }


def run_quality(request: dict) -> dict:
    """Perplexity, and KL/top-1 against the reference when one is given, in this process alone.
    The reference is loaded beside the artifact so each window is scored by both without
    storing a [tokens, vocab] array of every position."""
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import get_backend
    from edgeft.bench import perplexity
    from edgeft.config import load_target

    target = load_target(request["target"])
    artifact = Artifact.from_json(request["artifact"])
    backend = get_backend(artifact.backend)
    runner = backend.load(artifact, target)
    use_adapter(backend, runner, artifact, request.get("adapter"))
    reference = source_model = source_file = None
    answers = None
    try:
        ref = request.get("reference")
        if ref and Path(ref["path"]).resolve() != artifact.path.resolve():
            ref_artifact = Artifact.from_json(ref)
            reference = get_backend(ref_artifact.backend).load(ref_artifact, target)
        if request.get("source"):
            from edgeft.bench.source_model import SourceRunner

            source_model = SourceRunner(Path(request["source"]))
            if request.get("source_file"):  # the source's own file, in this runtime: its answers beside the artifact's
                from edgeft.bench.own_answers import OwnFileAnswers

                source_file = OwnFileAnswers(Artifact.from_json(request["source_file"]), target)
        # The reference tokenizes (else the source), so every level compared scores the same tokens.
        tokenizer = reference or source_model or runner
        eval_data = Path(request["eval_data"]) if request.get("eval_data") else None
        ids, text_source = perplexity.eval_ids(tokenizer.tokenize, eval_data, target.bench.eval_tokens)
        adapter = request.get("adapter")
        window = min(target.bench.eval_window, target.bench.context - (backend.adapter_positions(Path(adapter)) if adapter else 0))
        scores = perplexity.score(runner, ids, window, reference, source_model)
        if ref and reference is None:  # the artifact is its own reference
            scores.update(ref_ppl=scores["ppl"], ppl_increase_pct=0.0, kl_mean=0.0, kl_p99=0.0, top1_agree_pct=100.0)
        if source_model is not None:
            from edgeft.bench.source_model import answer_metrics, side_by_side

            answers = side_by_side(source_model, runner, source_file=source_file)
            scores.update(answer_metrics(answers))
    finally:
        runner.close()
        for other in (reference, source_model, source_file):
            if other is not None:
                other.close()
    return {
        "quality": scores,
        "answers": answers,
        "eval": {"source": text_source, "tokens": len(ids), "window": window, "sha256": perplexity.ids_digest(ids),
                 "reference": ref["path"] if ref else None, "source_model": source_model.label if source_model else None,
                 "source_file": request["source_file"]["path"] if source_file is not None else None,
                 **({"source_file_answers": {"cached": source_file.hits, "generated": source_file.misses,
                                             "cache": str(source_file.path)}} if source_file is not None else {})},
    }


def main(argv: list[str]) -> int:
    from edgeft.errors import EdgeftError

    request = json.loads(Path(argv[0]).read_text())
    try:
        result = run(request)
    except EdgeftError as exc:
        result = {"error": exc.one_line(), "exit_code": exc.exit_code}
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
