"""Which one layer the tight demo should drop: the block pick's criterion against answers on unseen prompts.

The `gguf-small` build prunes one layer of 30 and picks it by the "block" criterion: the pruned
model's mean NLL of the training targets on 16 calibration records. Those scores sit close together
(layer 17: 1.53, 14: 1.55, 12: 1.59, ...), so this asks whether the pick matters for what the model
answers, and whether another criterion measured on the training split, the KL from the teacher on
every target token or top-1 agreement with it, would pick better. For each candidate layer, the
untrained pruned student (fp32, as the layer pick sees it):

- its NLL, KL(teacher || student) and top-1 agreement on the build's whole training split;
- its greedy answers to the bench's six and 40 shipped prompts no training run sees, each scored as
  the bench's answer line does (`answer_levers.summary`).

    python benchmarks/layer_drop_answers.py --build out/demo-small [--layers 17,14,12] [--top 10]
    python benchmarks/layer_drop_answers.py --build out/demo-small --criteria-only --train-answers

The second adds, to the first's candidates, the same answer line on 48 training prompts: whether a
candidate's rank on the unseen prompts holds on another set of prompts.

Results: results/layer_drop_answers.json (each answer's text is in it)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, context, write  # noqa: E402
from answer_levers import ANSWER_TOKENS, _Greedy, _print, _trained_inputs, memo_teacher, scored_prompts, summary  # noqa: E402


def split_scores(student, records, teacher_logprobs, pad_id: int, batch_size: int) -> dict:
    """NLL of the targets, KL(teacher || student) and top-1 agreement, over every target token."""
    import torch

    from edgeft.distill.logits import target_logits
    from edgeft.distill.records import IGNORE, collate

    nll = kl = agree = n = 0.0
    with torch.no_grad():
        for i, start in enumerate(range(0, len(records), batch_size)):
            batch = collate(records[start:start + batch_size], pad_id)
            logp = torch.log_softmax(target_logits(student, batch)[0].float(), -1)
            t = teacher_logprobs[i].float()
            tgt = batch["targets"][batch["targets"] != IGNORE]
            nll += float(-logp.gather(1, tgt[:, None]).sum())
            kl += float((t.exp() * (t - logp)).sum())
            agree += float((logp.argmax(-1) == t.argmax(-1)).sum())
            n += tgt.numel()
    return {"nll": nll / n, "kl": kl / n, "top1": agree / n, "tokens": int(n)}


def greedy_pairs(teacher, prompts: list[str], new_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, the teacher's greedy answer ids) for training prompts: what the answer line
    compares, on prompts the build may look at."""
    pairs = []
    for prompt in prompts:
        ids = teacher.own_chat_ids(prompt)
        pairs.append((ids, teacher.until_stop(teacher.greedy(ids, new_tokens))))
    return pairs


def greedy_scores(model, pairs) -> dict:
    """Teacher-forced on the teacher's greedy answers: the candidate's NLL per answer token, how often
    its argmax is the teacher's token, and how many answers it would start the teacher's way (the
    first four tokens its argmax)."""
    import torch

    nll = agree = n = 0.0
    starts = 0
    with torch.no_grad():
        for prompt, answer in pairs:
            if not answer:
                continue
            ids = torch.tensor([prompt + answer])
            logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1].float(), -1)
            tgt = torch.tensor(answer)
            nll += float(-logp.gather(1, tgt[:, None]).sum())
            hit = logp.argmax(-1) == tgt
            agree += float(hit.sum())
            starts += bool(hit[:4].all())
            n += len(answer)
    return {"greedy_nll": nll / n, "greedy_top1": agree / n, "greedy_starts": starts, "greedy_answers": len(pairs),
            "greedy_tokens": int(n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", type=Path, required=True, help="a finished `edgeft build --target gguf-small` folder")
    ap.add_argument("--layers", default="", help="comma-separated single layers to drop (default: the pick's --top best)")
    ap.add_argument("--top", type=int, default=10, help="without --layers: this many layers, lowest block-pick NLL first")
    ap.add_argument("--prompts", type=int, default=40, help="shipped prompts scored beside the bench's six")
    ap.add_argument("--criteria-only", action="store_true",
                    help="add the greedy-answer criteria to an existing results file's candidates; no answers generated")
    ap.add_argument("--train-answers", action="store_true",
                    help="with --criteria-only: also generate each candidate's greedy answers to the training prompts and "
                         "score them as the answer line does (does a candidate's rank on unseen prompts show on these?)")
    ap.add_argument("--train-prompts", type=int, default=48, help="training prompts whose teacher greedy answers are scored")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "layer_drop_answers.json")
    args = ap.parse_args()

    import torch

    from edgeft.bench.source_model import side_by_side
    from edgeft.distill import student as student_mod
    from edgeft.distill.logits import target_logits
    from edgeft.distill.records import collate, read_records

    torch.set_num_threads(2)
    work = args.build / "work"
    pick = json.loads((work / "distill" / "student.json").read_text())["layer_pick"]["nll_by_dropped_block"]
    single = {int(k.split("-")[0]): v for k, v in pick.items() if k.split("-")[0] == k.split("-")[1]}
    layers = ([int(x) for x in args.layers.split(",") if x] if args.layers
              else sorted(single, key=single.__getitem__)[:args.top])
    teacher = memo_teacher(work / "source-hf")
    tmodel = teacher.model  # fp32, eval mode; each candidate (`without`) is a deep copy without one layer
    n_layers = tmodel.config.num_hidden_layers
    pad = teacher.tokenizer.pad_token_id or teacher.tokenizer.eos_token_id
    stop = sorted(teacher.stop_ids())

    def without(layer: int):
        return student_mod.drop_layers(tmodel, tuple(i for i in range(n_layers) if i != layer)).eval()

    records = read_records(work / "data" / "train.jsonl", vocab_size=tmodel.config.vocab_size, max_length=256)
    batch_size = 8
    prompts = scored_prompts(_trained_inputs(work / "data"), args.prompts)
    train_prompts = [json.loads(line)["input"] for line in (work / "data" / "train.records.jsonl").read_text().splitlines()]
    pairs = greedy_pairs(teacher, train_prompts[:args.train_prompts], ANSWER_TOKENS)
    if args.criteria_only:
        saved = json.loads(args.out.read_text())
        for row in saved["rows"]:
            student = without(row["dropped"])
            row["train_split"].update(greedy_scores(student, pairs))
            if args.train_answers:
                row["train_answers"] = summary(side_by_side(teacher, _Greedy(student, stop, pad),
                                                            tuple(train_prompts[:args.train_prompts]), ANSWER_TOKENS))
                print("   training prompts:", {k: round(v, 1) for k, v in row["train_answers"].items()}, flush=True)
            print(row["variant"], {k: round(v, 4) for k, v in row["train_split"].items()},
                  "within", row["answers"]["within_line"], "mean", round(row["answers"]["mean_pct"], 1), flush=True)
            del student
        write(args.out, saved)
        return
    with torch.no_grad():  # the teacher's log-probs at every target token, once, in fp16
        teacher_logprobs = [torch.log_softmax(target_logits(tmodel, collate(records[s:s + batch_size], pad))[0].float(), -1).half()
                            for s in range(0, len(records), batch_size)]
    results = []
    for layer in layers:
        started = time.perf_counter()
        student = without(layer)
        scores = {**split_scores(student, records, teacher_logprobs, pad, batch_size), **greedy_scores(student, pairs)}
        rows = side_by_side(teacher, _Greedy(student, stop, pad), tuple(prompts), ANSWER_TOKENS)
        results.append({"variant": f"drop{layer}", "dropped": layer, "block_pick_nll": single.get(layer),
                        "train_split": scores, "answers": summary(rows), "rows": rows,
                        "seconds": round(time.perf_counter() - started, 1)})
        _print(results[-1])
        print(f"          train split: nll {scores['nll']:.4f}  kl {scores['kl']:.4f}  top-1 {scores['top1']:.3f}", flush=True)
        write(args.out, {"context": context(), "build": str(args.build), "prompts": prompts, "rows": results})
        del student


if __name__ == "__main__":
    main()
