"""`edgeft bench NEW --against OLD`: both artifacts benchmarked in the same job, interleaved.

Two child processes (spawned) each load both artifacts once and keep them warm, each artifact
after its own warm-up; one loads A first, the other B, and each side's peak RSS is read in the
process that loaded it first, before the other side was loaded. A round runs each side once in
each process, in an order drawn per round, and a side's figure for the round is the geometric mean
of its two runs: a process that is faster than the other (it happens, benchmarks/README.md) speeds
both sides alike, so its factor cancels in the ratio. The verdict per timing metric comes from the
paired per-round ratios (`ab.py`); size, memory and quality are measured once per side and compared
against the tolerance directly (they do not drift with load)."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

from edgeft.backends.base import Artifact
from edgeft.bench import ab
from edgeft.config import Target
from edgeft.errors import ArtifactError, EdgeftError


def is_build_folder(path: Path) -> bool:
    """An `edgeft build` output folder (its manifest names the artifact it shipped), not a folder
    artifact (an ONNX model) that a backend recognises itself."""
    from edgeft.backends.registry import identify

    path = Path(path)
    return path.is_dir() and (path / "manifest.json").is_file() and identify(path) is None


def resolve_artifact(path: Path, default_backend: str) -> Artifact:
    """A file or folder artifact, or a build folder (its manifest names the artifact it shipped)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError("no such file or folder", file=path)
    manifest = path / "manifest.json"
    if is_build_folder(path):
        try:
            name = json.loads(manifest.read_text(encoding="utf-8"))["stages"]["compile"]["artifact"]
        except (ValueError, KeyError, TypeError):
            raise ArtifactError("a build folder whose manifest.json names no compiled artifact", file=manifest) from None
        path = path / name
    return identified(path, default_backend)


def identified(path: Path, default_backend: str) -> Artifact:
    """An artifact on disk with the backend and level that made it, as that backend reads them back; a
    file no backend recognises goes to `default_backend`. Either way the backend's cheap file check
    runs here, in the CLI process, before any child starts."""
    from edgeft.backends.registry import identify

    found = identify(path)
    return _checked(path, *(found if found is not None else (default_backend, "unknown")))


def _checked(path: Path, backend: str, level: str) -> Artifact:
    """The artifact, once its backend's cheap file check passes."""
    from edgeft.backends.registry import info

    info(backend).check_file(path)
    return Artifact(path=path, backend=backend, quant=level)


def own_file(path: Path, backend: str, *, place: str | None = None) -> Artifact | None:
    """The source's own file as an artifact of `backend`, for its answers through the shipped file's
    runtime; None when it is not that backend's file (an HF folder, a GGUF source of an ONNX build).
    With `place` (a flag the user gave it by), that is bad input instead."""
    from edgeft.backends.registry import identify

    found = identify(Path(path))
    if found is None or found[0] != backend:
        if place is None:
            return None
        raise ArtifactError(f"not a {backend} file: the source's own file is run by the shipped file's runtime, "
                            f"{backend}", file=path, place=place)
    return _checked(Path(path), *found)


def _serve(conn, artifacts: list[tuple[str, dict]], target_toml: str, target_name: str) -> None:
    """In the child: load each artifact once and warm it up, first to last; the peak RSS after the
    first is that side's own (the first side a process loads is not the same in the two processes).
    Then answer ("run", side) with one timed generation until "stop"."""
    import tempfile

    from edgeft.bench.prompt import prompt_ids
    from edgeft.bench.worker import peak_rss_mb
    from edgeft.backends.registry import get_backend
    from edgeft.config import load_target
    from edgeft.progress import mute_import_noise

    mute_import_noise()
    runners: dict[str, object] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="edgeft-ab-") as tmp:
            profile = Path(tmp) / f"{target_name}.toml"
            profile.write_text(target_toml, encoding="utf-8")
            target = load_target(profile)
        ids: dict[str, list[int]] = {}
        first_rss = None
        for label, artifact in artifacts:
            art = Artifact.from_json(artifact)
            runner = runners[label] = get_backend(art.backend).load(art, target)
            ids[label] = prompt_ids(runner.tokenize, target.bench.prompt_tokens)
            for _ in range(target.bench.warmup):
                runner.generate(ids[label], target.bench.new_tokens)
            if first_rss is None:
                first_rss = peak_rss_mb()
        conn.send({"ready": True, "prompt_tokens": {label: len(v) for label, v in ids.items()},
                   "first": artifacts[0][0], "peak_rss_mb": first_rss})
        while True:
            command = conn.recv()
            if command[0] == "run":
                gen = runners[command[1]].generate(ids[command[1]], target.bench.new_tokens)
                conn.send({"token_times": gen.token_times, "n_tokens": len(gen.tokens)})
            else:
                conn.send({label: {"versions": r.library_versions(), "runtime": r.fingerprint()} for label, r in runners.items()})
                return
    except EdgeftError as exc:
        conn.send({"error": exc.one_line()})
    except Exception as exc:  # an internal error, reported by the parent on one line
        conn.send({"error": f"internal error: {type(exc).__name__}: {exc}", "internal": True})
    finally:
        for runner in runners.values():
            runner.close()


class Worker:
    """One warm child process serving both artifacts, loaded in the order given."""

    def __init__(self, artifacts: list[tuple[str, Artifact]], target: Target):
        ctx = multiprocessing.get_context("spawn")
        self.names = " and ".join(str(a.path) for _, a in artifacts)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, [(label, a.to_json()) for label, a in artifacts],
                                                     target.to_toml(), target.name), daemon=True)
        self.proc.start()
        child.close()
        self.ready: dict = {}

    def wait_ready(self) -> None:
        self.ready = self._recv()

    def _recv(self) -> dict:
        from edgeft.child import exit_failure

        try:
            reply = self.conn.recv()
        except EOFError:
            self.proc.join()
            raise exit_failure(self.proc.exitcode or -1, f"the benchmark process for {self.names}", "no answer") from None
        if "error" in reply:
            if reply.get("internal"):
                raise RuntimeError(reply["error"])
            raise EdgeftError(reply["error"])
        return reply

    def run(self, label: str) -> dict:
        self.conn.send(("run", label))
        return self._recv()

    def stop(self) -> dict:
        self.conn.send(("stop",))
        reply = self._recv()
        self.proc.join()
        return reply

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def run_metrics(run: dict, prompt_tokens: int) -> dict[str, float]:
    from edgeft.bench.latency import latency_metrics

    _, per_run = latency_metrics({"runs": [run], "prompt_tokens": prompt_tokens, "peak_rss_mb": 0.0, "rss_before_load_mb": 0.0})
    return per_run[0]


def against(new: Artifact, old: Artifact, target: Target, *, tolerance_pct: float, rounds: int = 20,
            max_seconds: float | None = None, adaptive: bool = False, seed: int = 0, quality: bool = True,
            eval_data: Path | None = None, progress=None) -> dict:
    """Interleaved rounds of OLD (A) and NEW (B), then the verdicts. `rounds` is the number of rounds,
    or with `adaptive` the most; `max_seconds` bounds the rounds' wall time either way."""
    from edgeft.bench import machine
    from edgeft.bench.baseline import GateLine

    if rounds < ab.MIN_ROUNDS:
        raise EdgeftError(f"at least {ab.MIN_ROUNDS} rounds are needed for a 95% interval, got {rounds}", place="--rounds")
    started = time.perf_counter()
    workers: list[Worker] = []
    try:
        # process 0 loads A first, process 1 loads B first: each side's peak RSS is read where it loaded alone
        for artifacts in ((("A", old), ("B", new)), (("B", new), ("A", old))):
            workers.append(Worker(list(artifacts), target))
        for worker in workers:  # both load at once; the rounds start when both are warm
            worker.wait_ready()
        prompt_tokens = workers[0].ready["prompt_tokens"]
        plan = ab.round_orders(rounds, seed)
        per_round: list[dict] = []
        verdicts: list[ab.Verdict] = []
        loop_start = time.perf_counter()
        for i, order in enumerate(plan):
            runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            for label, process in order:
                runs[label].append(run_metrics(workers[process].run(label), prompt_tokens[label]))
            measured = {label: {m: ab.round_value(pair[0][m], pair[1][m]) for m in ab.TIMED} for label, pair in runs.items()}
            ratios = {m: ab.worse_ratio(m, measured["A"][m], measured["B"][m]) for m in ab.TIMED}
            per_round.append({"round": i + 1, "order": " ".join(f"{label}{process}" for label, process in order),
                              "A": measured["A"], "B": measured["B"], "ratios": ratios})
            if progress is not None:
                progress(i + 1, rounds)
            if len(per_round) >= ab.MIN_ROUNDS:
                verdicts = [ab.verdict(m, [r["ratios"][m] for r in per_round], tolerance_pct) for m in ab.TIMED]
                if adaptive and ab.decided(verdicts):
                    break
            if max_seconds is not None and time.perf_counter() - loop_start > max_seconds:
                break
        if len(per_round) < ab.MIN_ROUNDS:
            raise EdgeftError(f"--max-seconds {max_seconds:g} allowed {len(per_round)} rounds; a verdict needs {ab.MIN_ROUNDS}",
                              place="--max-seconds")
        finals = workers[0].stop()
        workers[1].stop()
    finally:
        for worker in workers:
            worker.kill()
    rss = {w.ready["first"]: w.ready["peak_rss_mb"] for w in workers}
    static = {label: {"package_mb": art.package_bytes() / 1e6, "peak_rss_mb": rss[label]}
              for label, art in (("A", old), ("B", new))}
    evaluation = None
    if quality:
        from edgeft.bench.latency import run_worker

        for label, art in (("A", old), ("B", new)):
            q = run_worker(art, target, mode="quality", eval_data=str(eval_data) if eval_data else None)
            static[label].update(ppl=q["quality"]["ppl"])
            if evaluation is None:
                evaluation = q["eval"]
            elif evaluation["sha256"] != q["eval"]["sha256"]:
                raise EdgeftError("the two artifacts tokenize the evaluation text differently: their quality cannot be compared",
                                  file=new.path)
    static_lines = [GateLine(metric, "lower", static["A"][metric], static["B"][metric], tolerance_pct).to_json()
                    for metric in static["A"]]
    statuses = {v.status for v in verdicts} | {line["status"] for line in static_lines}
    result = "FAIL" if "FAIL" in statuses else "INCONCLUSIVE" if "INCONCLUSIVE" in statuses else "PASS"
    return {
        "schema": 1,
        "mode": "against",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "old": {**old.to_json(), "label": "A", "versions": finals["A"]["versions"], "runtime": finals["A"]["runtime"]},
        "new": {**new.to_json(), "label": "B", "versions": finals["B"]["versions"], "runtime": finals["B"]["runtime"]},
        "target": {"name": target.name, "bench": vars(target.bench), "threads_used": target.resolved_threads()},
        "machine": machine.describe(target.resolved_threads()),
        "method": {"pairing": "two warm processes each serve both sides; a round runs each side once in each process "
                              "(order drawn per round) and takes each side's geometric mean, cancelling a per-process speed factor",
                   "ratio": "new/old for times, old/new for rates (> 1 is worse)",
                   "interval": f"distribution-free {ab.CONFIDENCE:.0%} interval for the median ratio (order statistics)",
                   "rounds_requested": rounds, "adaptive": adaptive, "max_seconds": max_seconds, "seed": seed},
        "rounds": per_round,
        "verdicts": [v.to_json() for v in verdicts],
        "static": static_lines,
        "eval": evaluation,
        "verdict": result,
        "seconds": round(time.perf_counter() - started, 1),
    }
