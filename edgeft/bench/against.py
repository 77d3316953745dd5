"""`edgeft bench NEW --against OLD`: both artifacts benchmarked in the same job, interleaved.

Each side is loaded once into its own child process (spawned, so its peak RSS is its own) and
kept warm; after each side's own warm-up, rounds alternate A B / B A in an order drawn per round,
one timed generation per side per round. The verdict per timing metric comes from the paired
per-round ratios (`ab.py`); size, memory and quality are measured once per side and compared
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


def resolve_artifact(path: Path, default_backend: str) -> Artifact:
    """A file or folder artifact, or a build folder (its manifest names the artifact it shipped)."""
    from edgeft.backends.registry import identify

    path = Path(path)
    if not path.exists():
        raise ArtifactError("no such file or folder", file=path)
    manifest = path / "manifest.json"
    if path.is_dir() and manifest.is_file() and identify(path) is None:
        try:
            name = json.loads(manifest.read_text(encoding="utf-8"))["stages"]["compile"]["artifact"]
        except (ValueError, KeyError, TypeError):
            raise ArtifactError("a build folder whose manifest.json names no compiled artifact", file=manifest) from None
        path = path / name
    found = identify(path)
    backend, level = found if found is not None else (default_backend, "unknown")
    return Artifact(path=path, backend=backend, quant=level)


def _serve(conn, artifact: dict, target_toml: str, target_name: str) -> None:
    """In the child: load once, warm up, then answer "run" with one timed generation until "stop"."""
    import tempfile

    from edgeft.bench.prompt import prompt_ids
    from edgeft.bench.worker import _rss_mb
    from edgeft.backends.registry import get_backend
    from edgeft.config import load_target
    from edgeft.progress import mute_import_noise

    mute_import_noise()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeft-ab-") as tmp:
            profile = Path(tmp) / f"{target_name}.toml"
            profile.write_text(target_toml, encoding="utf-8")
            target = load_target(profile)
        art = Artifact.from_json(artifact)
        runner = get_backend(art.backend).load(art, target)
        ids = prompt_ids(runner.tokenize, target.bench.prompt_tokens)
        for _ in range(target.bench.warmup):
            runner.generate(ids, target.bench.new_tokens)
        conn.send({"ready": True, "prompt_tokens": len(ids)})
        while True:
            command = conn.recv()
            if command == "run":
                gen = runner.generate(ids, target.bench.new_tokens)
                conn.send({"token_times": gen.token_times, "n_tokens": len(gen.tokens)})
            else:
                conn.send({"peak_rss_mb": _rss_mb(), "versions": runner.library_versions(), "runtime": runner.fingerprint()})
                runner.close()
                return
    except EdgeftError as exc:
        conn.send({"error": exc.one_line()})
    except Exception as exc:  # an internal error, reported by the parent on one line
        conn.send({"error": f"internal error: {type(exc).__name__}: {exc}", "internal": True})


class Side:
    """One warm child process serving one artifact."""

    def __init__(self, label: str, artifact: Artifact, target: Target):
        ctx = multiprocessing.get_context("spawn")
        self.label, self.artifact = label, artifact
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, artifact.to_json(), target.to_toml(), target.name), daemon=True)
        self.proc.start()
        child.close()
        self.ready = self._recv()

    def _recv(self) -> dict:
        from edgeft.child import exit_failure

        try:
            reply = self.conn.recv()
        except EOFError:
            self.proc.join()
            raise exit_failure(self.proc.exitcode or -1, f"the benchmark process for {self.artifact.path}", "no answer") from None
        if "error" in reply:
            if reply.get("internal"):
                raise RuntimeError(reply["error"])
            raise EdgeftError(reply["error"])
        return reply

    def run(self) -> dict:
        self.conn.send("run")
        return self._recv()

    def stop(self) -> dict:
        self.conn.send("stop")
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
    sides: dict[str, Side] = {}
    try:
        for label, artifact in (("A", old), ("B", new)):
            sides[label] = Side(label, artifact, target)
        orders = ab.round_orders(rounds, seed)
        per_round: list[dict] = []
        verdicts: list[ab.Verdict] = []
        loop_start = time.perf_counter()
        for i, order in enumerate(orders):
            measured = {}
            for label in order:
                measured[label] = run_metrics(sides[label].run(), sides[label].ready["prompt_tokens"])
            ratios = {m: ab.worse_ratio(m, measured["A"][m], measured["B"][m]) for m in ab.TIMED}
            per_round.append({"round": i + 1, "order": "".join(order), "A": measured["A"], "B": measured["B"], "ratios": ratios})
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
        finals = {label: side.stop() for label, side in sides.items()}
    finally:
        for side in sides.values():
            side.kill()
    static = {label: {"package_mb": art.package_bytes() / 1e6, "peak_rss_mb": finals[label]["peak_rss_mb"]}
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
        "method": {"pairing": "one run per side per round, order drawn per round", "ratio": "new/old for times, old/new for rates (> 1 is worse)",
                   "interval": f"distribution-free {ab.CONFIDENCE:.0%} interval for the median ratio (order statistics)",
                   "rounds_requested": rounds, "adaptive": adaptive, "max_seconds": max_seconds, "seed": seed},
        "rounds": per_round,
        "verdicts": [v.to_json() for v in verdicts],
        "static": static_lines,
        "eval": evaluation,
        "verdict": result,
        "seconds": round(time.perf_counter() - started, 1),
    }
