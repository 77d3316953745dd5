"""A prepared data folder for on-policy distillation: the teacher's answers plus the student's own.

The demo distills on the teacher's sampled answers, so the student only ever sees the teacher's
text. Greedy answers go wrong where the student's own first tokens lead it somewhere the teacher
never wrote (issue 14's week and sky answers). On-policy distillation (GKD, MiniLLM) also trains on
text the student writes itself, scored by the teacher's logits at every position, so the student
learns what the teacher would say next from where the student actually is.

This writes FOLDER/train.jsonl holding the build's training records followed by one more per record:
its prompt, then the student's greedy answer (up to 64 tokens, as the teacher's), labelled. The eval
split and the records' texts are copied, so `answer_levers.py` keeps the same prompts out of its
scored set. Train on it with the teacher's logits alone (`answer_levers.py`'s `onpolicy` variant,
alpha 1.0): cross-entropy on the student's own tokens would teach it what it already says.

    python benchmarks/onpolicy_data.py --build out/demo-small --out /tmp/onpolicy
    python benchmarks/answer_levers.py --build out/demo-small --only onpolicy,kd-only --data onpolicy=/tmp/onpolicy --prompts 100

The student is the build's pruned one before training (`work/distill/student`), answering in fp32
through transformers (`SourceRunner.greedy`, as the bench's answer line), one prompt at a time:
slow on two cores (minutes). This is how the lever was first measured; the build now does the same
inside its distill stage, batched (`edgeft distill --own-answers`, on in the demo preset), so a build
made since already trains on these records: this script is for builds made before."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import context, write  # noqa: E402

ANSWER_TOKENS = 64  # the data stage's teacher answers are as long (`synth_max_new_tokens`)


def prompt_part(row: dict) -> list[int]:
    """A prepared record's tokens before its first labelled one: the chat-templated prompt."""
    from edgeft.distill.own_answers import prompt_of
    from edgeft.distill.records import Record

    keep = row["attention_mask"]
    return list(prompt_of(Record(tuple(i for i, k in zip(row["input_ids"], keep) if k),
                                 tuple(label for label, k in zip(row["labels"], keep) if k))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", type=Path, required=True, help="a finished `edgeft build --target gguf-small` folder")
    ap.add_argument("--out", type=Path, required=True, help="the data folder to write")
    args = ap.parse_args()

    from edgeft.bench.source_model import SourceRunner

    data, student = args.build / "work" / "data", args.build / "work" / "distill" / "student"
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("eval.jsonl", "eval.records.jsonl", "train.records.jsonl"):
        shutil.copy(data / name, args.out / name)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    runner = SourceRunner(student)  # the bench's greedy answers: fp32, stopping at the model's end-of-turn ids
    own, started = [], time.perf_counter()
    for row in rows:
        prompt = prompt_part(row)
        answer = runner.greedy(prompt, ANSWER_TOKENS)
        own.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer,
                    "attention_mask": [1] * (len(prompt) + len(answer))})
    seconds = time.perf_counter() - started
    (args.out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + own))
    write(args.out / "onpolicy.json", {"context": context(), "build": str(args.build), "teacher_records": len(rows),
                                       "student_records": len(own), "answer_tokens": ANSWER_TOKENS,
                                       "student_tokens": sum(label != -100 for r in own for label in r["labels"]),
                                       "seconds": round(seconds, 1)})
    print(f"{len(own)} student answers in {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
