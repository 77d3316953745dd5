"""Which training lever makes the tight demo's student answer like its teacher, on prompts no run trains on.

Issue 14 asks the `gguf-small` build for greedy answers a person would accept. The bench shows six
fixed prompts, and on six a lever cannot be told from the churn of one run (a fact fixed, another
lost). This scores the student, fp32 with its adapter merged (before the target's quantization,
which every lever shares), on the six plus `--prompts` English prompts of the shipped set that no
training run here sees. Each answer is scored as the bench's answer line does
(`bench.source_model.side_by_side`): how much more perplexing the teacher finds the student's greedy
answer than its own. Each lever is changed alone from the build demo's distill settings, on the
build's 27-layer student, data and teacher.

    python benchmarks/answer_levers.py --build out/demo-small
    python benchmarks/answer_levers.py --build out/demo-small --only untrained,demo,seed1
    python benchmarks/answer_levers.py --build out/demo-small --only data192 --data data192=/tmp/data192

`--layers 29,28` scores the build's source pruned to that many layers instead (the block pick), untrained
(`layers29`) and after the demo's training (`layers29-demo`); `--mlp-width 1280` prunes every layer's
MLP to that many channels instead of dropping layers (`mlp1280`, `mlp1280-demo`: the channels whose
mean square activation on the training split (`edgeft.importance`) times their down-projection column's
square norm is largest, Minitron-style).

`--data NAME=FOLDER` adds a lever that trains on another prepared folder, for example twice the
teacher answers (`edgeft data prepare -o DIR --max-length 256 --max-new-tokens 64
--synth-max-records 192`) or greedy ones (`--temperature 0`); its prompts are kept out of the
scored ones too. Results: results/answer_levers.json (each answer's text is in it)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402

VARIANTS: dict[str, dict] = {
    "demo": {},                      # the build demo's settings: fp32 base, lr 1e-3, 48 steps x 4, and since
                                     # 2026-12-07 the student's own answers (alpha 1.0): the JSON files before
                                     # that date hold the teacher-only demo under this name
    "untrained": {},                 # demo's pruned student as the layer pick left it, no adapter
    "seed1": {"seed": 1},            # the same, another seed: the churn a lever must beat
    "lr5e-4": {"lr": 5e-4},
    "kd-only": {"alpha": 1.0, "own_answer_tokens": 0},  # the teacher's answers alone, no cross-entropy on them
    "rank4": {"lora_rank": 4, "lora_alpha": 8},
    "steps96": {"steps": 96},
    # with `--data onpolicy=FOLDER` (benchmarks/onpolicy_data.py): the teacher's answers plus the
    # student's own, scored by the teacher's logits alone (cross-entropy on the student's own tokens
    # would teach it what it already says); the folder already holds them, so the run adds none
    "onpolicy": {"alpha": 1.0, "own_answer_tokens": 0},
    "teacher-only": {"alpha": 0.5, "own_answer_tokens": 0},  # the demo before on-policy records
    "plain-drop": {"stand_in": False},  # the dropped layers without their linear stand-in (distill.stand_in)
}
ANSWER_TOKENS = 48
WITHIN_PCT = 50.0  # the tight profile's answer line


class _Greedy:
    """A torch model as the bench's artifact: greedy tokens for prompt ids."""

    def __init__(self, model, stop: list[int], pad: int):
        self.model, self.stop, self.pad = model, stop, pad

    def generate(self, ids: list[int], new_tokens: int):
        import torch

        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=new_tokens, do_sample=False, eos_token_id=self.stop or None,
                                      pad_token_id=self.pad)
        return type("Generated", (), {"tokens": out[0, len(ids):].tolist()})


def _trained_inputs(*folders: Path) -> set[str]:
    seen: set[str] = set()
    for folder in folders:
        for name in ("train.records.jsonl", "eval.records.jsonl"):
            for line in (folder / name).read_text().splitlines():
                seen.add(json.loads(line)["input"])
    return seen


def scored_prompts(excluded: set[str], n: int) -> list[str]:
    """The bench's six, then `n` English prompts of the shipped set, evenly spaced, none trained on."""
    from edgeft.bench.source_model import CHAT_PROMPTS

    rows = [json.loads(line) for line in (ROOT / "edgeft" / "data" / "default_prompts.jsonl").read_text().splitlines()]
    pool = [r["input"] for r in rows if r["metadata"].get("language") == "en" and r["input"] not in excluded]
    step = max(len(pool) / max(n, 1), 1.0)
    return list(CHAT_PROMPTS) + [pool[int(i * step)] for i in range(min(n, len(pool)))]


def mlp_channel_scores(model, means: dict) -> list:
    """Per layer, each MLP channel's importance: its activation's mean square (the input of down_proj, from
    `edgeft.importance`) times its down_proj column's square norm, i.e. the energy it adds to the residual."""
    return [means[f"model.layers.{i}.mlp.down_proj.weight"] * layer.mlp.down_proj.weight.detach().float().pow(2).sum(0)
            for i, layer in enumerate(model.model.layers)]


def prune_mlp(model, scores: list, width: int):
    """Keep the `width` highest-scoring MLP channels of every layer (in their order), in place."""
    import torch

    for layer, score in zip(model.model.layers, scores):
        keep = torch.sort(torch.topk(score, width).indices).values
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, width, bias=False)
            new.weight.data = old.weight.data[keep].clone()
            setattr(mlp, name, new)
        old = mlp.down_proj
        mlp.down_proj = torch.nn.Linear(width, old.out_features, bias=False)
        mlp.down_proj.weight.data = old.weight.data[:, keep].clone()
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    model.config.intermediate_size = width
    return model


def _mlp_student(source: Path, data: Path, width: int, out: Path) -> Path:
    """The source with every MLP pruned to `width` channels, scored on the data's training split, saved to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft import importance

    if not (out / "config.json").exists():
        means = out.parent / f"{out.name}-{importance.FILE}"  # every token of the training split
        importance.collect(source, data / "train.jsonl", means, max_tokens=1 << 30)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        scores = mlp_channel_scores(model, {k: torch.from_numpy(v) for k, v in importance.load(means).items()})
        prune_mlp(model, scores, width).save_pretrained(out)
        AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def repeats(text: str) -> bool:
    """A loop a reader sees: some four words (case and punctuation aside) that come back three times or more."""
    words = re.findall(r"[\w']+", text.lower())
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return any(grams.count(g) >= 3 for g in set(grams))


def summary(rows: list[dict]) -> dict:
    pct = [float(r["ppl_vs_source_pct"]) for r in rows]
    six = pct[:6]
    return {"prompts": len(rows), "mean_pct": statistics.fmean(pct), "median_pct": statistics.median(pct),
            "within_line": sum(p <= WITHIN_PCT for p in pct), "same": sum(bool(r["same"]) for r in rows),
            "repeat": sum(repeats(str(r["artifact"])) for r in rows),
            "six_worst_pct": max(six), "six_mean_pct": statistics.fmean(six),
            "six_within_line": sum(p <= WITHIN_PCT for p in six)}


def _gguf_runner(path: Path):
    """A GGUF file loaded as the bench loads it (llama.cpp, the tight profile's settings)."""
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import get_backend
    from edgeft.config import load_target

    return get_backend("gguf").load(Artifact(path=path, backend="gguf", quant="file"), load_target("gguf-small"))


def _print(result: dict) -> None:
    s, held = result["answers"], result.get("heldout_ppl_after")
    print(f"{result['variant']:10s} held-out {held if held is None else round(held, 2)!s:>6}  answers: mean {s['mean_pct']:6.1f} %  "
          f"median {s['median_pct']:6.1f} %  within {WITHIN_PCT:.0f} %: {s['within_line']}/{s['prompts']}  "
          f"same {s['same']}  repeat {s['repeat']}  six: worst {s['six_worst_pct']:.0f} %, within {s['six_within_line']}/6",
          flush=True)


def _requantized(build: Path, specs: list[str]) -> list[tuple[str, Path]]:
    """(LEVEL-TABLE, file): the build's f16 student compiled again at each LEVEL:TABLE by the GGUF
    backend's own `compile`, weighed by the build's importance file as the build rounds it."""
    from edgeft import importance as imp
    from edgeft.backends.base import Artifact
    from edgeft.backends.registry import get_backend
    from edgeft.config import load_target, to_dict

    work, backend = build / "work", get_backend("gguf")
    target = load_target(str(build / "target.toml"))
    f16 = work / "model-f16.gguf"
    reference = Artifact(path=f16, backend="gguf", quant="f16", files=(f16,))
    files = []
    for spec in specs:
        level, _, table = spec.partition(":")
        at = target.with_overrides(quant=level, gguf={**to_dict(target)["gguf"], "embedding_type": table})
        name = f"{level}-{table}"
        artifact = backend.compile(work / "merged", at, build / "answer-levers" / name, reference=reference, name=name,
                                   importance=work / "importance" / imp.FILE)
        files.append((name, artifact.path))
        print(f"{spec}: {artifact.path.stat().st_size / 1e6:.2f} MB", flush=True)
    return files


def memo_teacher(hf_dir: Path):
    """The teacher as the bench runs it (`SourceRunner`), each greedy answer computed once for every lever."""
    from edgeft.bench.source_model import SourceRunner

    class Teacher(SourceRunner):
        def __init__(self, folder: Path):
            super().__init__(folder)
            self.memo: dict[tuple[int, ...], list[int]] = {}

        def greedy(self, ids, new_tokens):
            key = (*ids, -new_tokens)
            if key not in self.memo:
                self.memo[key] = super().greedy(ids, new_tokens)
            return self.memo[key]

        def greedy_many(self, prompts, new_tokens):
            # one prompt at a time, as every result in the JSON files was scored: a batch can take a
            # near-tie the other way in the last bits, and the teacher's answers are the reference
            return [self.until_stop(self.greedy(ids, new_tokens)) for ids in prompts]

    return Teacher(hf_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", type=Path, required=True, help="a finished `edgeft build --target gguf-small` folder")
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--seed", type=int, default=None, help="train the levers run with this seed (named NAME-seedN)")
    ap.add_argument("--prompts", type=int, default=40, help="shipped prompts scored beside the bench's six")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=FOLDER",
                    help="a lever that trains the demo's settings on another prepared folder (its prompts are not scored)")
    ap.add_argument("--gguf", action="append", default=[], metavar="NAME=FILE",
                    help="also score a shipped GGUF file (through llama.cpp, as the bench runs it) under NAME")
    ap.add_argument("--requant", default="", metavar="LEVEL:TABLE,...",
                    help="also round the build's own f16 student at each level with the token table at TABLE, weighed by "
                         "the build's importance file as the build rounds it, and score each file (named LEVEL-TABLE)")
    ap.add_argument("--layers", default="", help="comma-separated layer counts: the source pruned to each (block pick)")
    ap.add_argument("--mlp-width", default="", help="comma-separated MLP widths: every layer's MLP pruned to each")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "answer_levers.json")
    args = ap.parse_args()

    import torch

    from edgeft.bench.source_model import side_by_side
    from edgeft.distill import qlora, run
    from edgeft.distill.records import open_prepared
    from edgeft.presets import build_preset

    work = args.build / "work"
    keep = tuple(json.loads((work / "distill" / "student.json").read_text())["kept_layers"])
    data = work / "data"
    args.gguf += [f"{name}={f}" for name, f in _requantized(args.build, [x for x in args.requant.split(",") if x])]
    names = ([] if args.gguf or args.layers or args.mlp_width else list(VARIANTS)) if args.only is None else [n for n in args.only.split(",") if n]
    folders = {name: Path(folder) for name, _, folder in (spec.partition("=") for spec in args.data)}
    if args.only is None:
        names += [n for n in folders if n not in names]
    # the pruning levers: a student other than the build's, untrained and after the demo's training
    students: dict[str, dict] = {}
    for n in (int(x) for x in args.layers.split(",") if x):
        students[f"layers{n}"] = {"keep_layers": None, "student_layers": n}
    for w in (int(x) for x in args.mlp_width.split(",") if x):
        students[f"mlp{w}"] = {"keep_layers": None, "layer_pick": "even",
                               "student": str(_mlp_student(work / "source-hf", data, w, args.build / "answer-levers" / f"mlp{w}-student"))}
    for name in students:
        names += [name, f"{name}-demo"]
    prompts = scored_prompts(_trained_inputs(data, *folders.values()), args.prompts)

    teacher = memo_teacher(work / "source-hf")
    stop = sorted(teacher.stop_ids())
    pad = teacher.tokenizer.pad_token_id or teacher.tokenizer.eos_token_id
    previous = json.loads(args.out.read_text()) if args.out.exists() and (args.only is not None or args.gguf) else {}
    results = {r["variant"]: r for r in previous.get("rows", [])}

    def save() -> None:  # after every result: a run stopped part way keeps what it measured
        write(args.out, {"context": context(), "build": str(args.build), "keep_layers": list(keep),
                         "prompts": prompts, "rows": list(results.values())})

    for spec in args.gguf:
        name, _, file = spec.partition("=")
        started = time.perf_counter()
        rows = side_by_side(teacher, _gguf_runner(Path(file)), tuple(prompts), ANSWER_TOKENS)
        results[name] = {"variant": name, "file": file, "answers": summary(rows), "rows": rows,
                         "seconds": round(time.perf_counter() - started, 1)}
        _print(results[name])
        save()
    for name in names:
        started = time.perf_counter()
        pruned = name.removesuffix("-demo") if name.removesuffix("-demo") in students else None
        untrained = name in ("untrained", pruned)
        changes = {**VARIANTS.get(name, {}), **students.get(pruned, {}), **({"seed": args.seed} if args.seed is not None else {})}
        seed = "" if args.seed is None else f"-seed{args.seed}"
        label = f"{name}{seed}"
        # a pruning lever's untrained and trained students come from one run (before and after its training)
        run_dir = args.build / "answer-levers" / ("demo" if name == "untrained" else f"{pruned}{seed}" if pruned else label)
        config = dataclasses.replace(build_preset("demo").distill, **{"keep_layers": keep, "save_every": 0, **changes})
        folder = folders.get(name, data)
        if not ((untrained or pruned) and (run_dir / "distill.json").exists()):
            run(str(work / "source-hf"), open_prepared(folder), run_dir, config,
                cache_dir=args.build / "answer-levers" / f"cache-{folder.name}")
        report = json.loads((run_dir / "distill.json").read_text())
        base = qlora.load_base(Path(report["student"]["path"]), quantize=False)
        model = base if untrained else qlora.load_adapter(base, run_dir / "adapter").merge_and_unload()
        model.eval()
        torch.manual_seed(0)
        rows = side_by_side(teacher, _Greedy(model, stop, pad), tuple(prompts), ANSWER_TOKENS)
        ev = report["eval"]
        results[label] = {"variant": label, "changes": changes, "data": str(folder),
                         "heldout_ppl_teacher": ev["teacher"]["perplexity"],
                         "heldout_ppl_after": ev["student_before" if untrained else "student_after"]["perplexity"],
                         "answers": summary(rows), "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
        _print(results[label])
        save()


if __name__ == "__main__":
    main()
