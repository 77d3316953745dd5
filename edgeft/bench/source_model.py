"""The model the user gave, run through transformers in fp32: what every artifact is judged against.

Not through a backend: the source must be scored the same way whatever the target (GGUF, ONNX,
TensorRT), and without our converter in between, so a converter bug cannot hide in both sides.
Used inside the quality worker (`bench/worker.py`), never in the CLI process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Fixed chat prompts whose greedy answers the report shows for the source and the artifact side by
# side, so a person sees what the shipped file says before it ships, and the budget's answer line
# scores. Short factual questions are in on purpose: one wrong early token there is a wrong answer.
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "Explain in one sentence what a CPU does.",
    "Write a short, friendly reply to: 'Thanks for your help yesterday!'",
    "How many days are there in a week?",
    "What color is the sky on a clear day?",
)
ANSWER_TOKENS = 48
# Where the answers part, a shipped-file token the source gives at least this share of its own
# token's probability was nearly the source's own pick: within a factor of two, a flip that 4-bit
# rounding, or another runtime's arithmetic on the very same weights, can make.
NEAR_TIE = 0.5


ANSWER_BATCH = 48  # prompts answered together (edgeft.greedy)


class SourceRunner:
    """`tokenize`, `logits` and greedy chat answers of an HF folder, fp32, on the CPU.

    A vocabulary-trimmed folder (its vocab_map.json names the untrimmed one) is scored as the
    untrimmed model: text is tokenized by the trimmed tokenizer (the artifact's ids), fed to the full
    model as the old ids, and its logits are taken at the kept ids, so log-softmax renormalises the
    full model's distribution over the kept tokens. Its chat answers are the full model's own."""

    def __init__(self, hf_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from edgeft.progress import quiet_libraries
        from edgeft.vocab_trim import read_map

        quiet_libraries()
        torch.manual_seed(0)
        self.hf_dir = Path(hf_dir)
        self.kept: list[int] | None = None
        self.artifact_tokenizer = AutoTokenizer.from_pretrained(self.hf_dir)
        model_dir = self.hf_dir
        record = read_map(self.hf_dir)
        if record is not None:
            self.kept, model_dir = record["kept"], Path(record["source"])
        # What the report names: the model scored, which for a trimmed folder is the untrimmed one.
        self.label = str(model_dir) if self.kept is None else \
            f"{model_dir}, untrimmed, renormalised over the {len(self.kept)} kept tokens"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def full_ids(self, token_ids: list[int]) -> list[int]:
        """Artifact ids as the source's own (the same ids unless the artifact's vocabulary was trimmed)."""
        return token_ids if self.kept is None else [self.kept[i] for i in token_ids]

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self.artifact_tokenizer(text, add_special_tokens=False)["input_ids"]

    def logits(self, token_ids: list[int]) -> "np.ndarray":
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([self.full_ids(token_ids)])).logits[0].float()
        return (out if self.kept is None else out[:, self.kept]).numpy()

    def stop_ids(self) -> set[int]:
        """End-of-turn ids: the tokenizer's EOS and the model's generation EOS."""
        from edgeft.models import stop_ids

        return stop_ids(self.tokenizer, self.model)

    def _chat_ids(self, tokenizer, prompt: str) -> list[int]:
        """A templated prompt carries its own BOS; a bare one (no chat template, as Gemma 3 270M's GGUF
        has) gets the tokenizer's own special tokens, the BOS such a model is lost without."""
        if not self.tokenizer.chat_template:
            return tokenizer(prompt, add_special_tokens=True)["input_ids"]
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                  tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat_ids(self, prompt: str) -> list[int]:
        """The prompt rendered and tokenized as the artifact's ids."""
        return self._chat_ids(self.artifact_tokenizer, prompt)

    def own_chat_ids(self, prompt: str) -> list[int]:
        """The prompt as the source model's own tokenizer splits it (for a trimmed artifact, not the
        trimmed pieces): what the model you gave answers."""
        return self._chat_ids(self.tokenizer, prompt)

    def answer(self, tokens: list[int]) -> str:
        """Generated ids up to the first end-of-turn, as text."""
        stop = self.stop_ids()
        kept = []
        for t in tokens:
            if t in stop:
                break
            kept.append(t)
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    def own_nll(self, token_ids: list[int], window: int) -> tuple[float, int]:
        """(total negative log-likelihood, tokens scored) of the text `token_ids` (artifact ids) spell,
        as the source scores it on its own tokenization, in windows of `window` tokens. For a trimmed
        artifact this is the honest comparison: the same text, each model on its own tokens."""
        import numpy as np
        import torch

        from edgeft.bench.perplexity import log_softmax, windows

        text = self.artifact_tokenizer.decode(token_ids)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        total, count = 0.0, 0
        for chunk in windows(ids, window):
            with torch.no_grad():
                lp = log_softmax(self.model(input_ids=torch.tensor([chunk])).logits[0, :-1].float().numpy())
            total += float(-lp[np.arange(len(chunk) - 1), chunk[1:]].sum())
            count += len(chunk) - 1
        return total, count

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        """The source's greedy answer (full-vocabulary ids) to its own prompt ids (`own_chat_ids`)."""
        import torch

        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=new_tokens, do_sample=False, eos_token_id=sorted(self.stop_ids()) or None,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return out[0, len(ids):].tolist()

    def greedy_many(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        """Each prompt's greedy answer, up to and including its first end-of-turn id: `until_stop(greedy(...))`
        for every prompt, generated together (edgeft.greedy)."""
        from edgeft.greedy import greedy_answers

        pad = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return [ids for ids, _ in greedy_answers(self.model, prompts, new_tokens=new_tokens, stop_ids=self.stop_ids(),
                                                 pad_id=pad, batch_size=ANSWER_BATCH)]

    def answer_logprobs(self, prompt_ids: list[int], answer_ids: list[int]) -> "np.ndarray":
        """Log-probability the source gives each of `answer_ids` (full-vocabulary ids) after its own
        prompt ids and the answer's earlier ids."""
        import numpy as np
        import torch

        from edgeft.bench.perplexity import log_softmax

        if not answer_ids:
            return np.zeros(0)
        ids = list(prompt_ids) + list(answer_ids)
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids])).logits[0, len(prompt_ids) - 1:-1].float().numpy()
        return log_softmax(out)[np.arange(len(answer_ids)), answer_ids]

    def answer_nll(self, prompt_ids: list[int], answer_ids: list[int]) -> tuple[float, int]:
        """(total negative log-likelihood, tokens) the source gives `answer_ids` (full-vocabulary ids)
        after its own prompt ids: how likely the model you gave finds an answer."""
        lp = self.answer_logprobs(prompt_ids, answer_ids)
        return float(-lp.sum()), len(answer_ids)

    def until_stop(self, tokens: list[int]) -> list[int]:
        """Generated full-vocabulary ids up to and including the first end-of-turn: the answer a chat
        app shows, and the decision to stop, which is part of it."""
        from edgeft.greedy import until_stop

        return until_stop(tokens, self.stop_ids())[0]

    def close(self) -> None:
        self.model = None


def side_by_side(source: SourceRunner, artifact, prompts: tuple[str, ...] = CHAT_PROMPTS,
                 new_tokens: int = ANSWER_TOKENS, source_file=None) -> list[dict[str, object]]:
    """Greedy answers of the source (transformers) and of the artifact (its own runtime) to the same
    chat prompts, rendered and tokenized once with the source's tokenizer (the export check holds the
    artifact to the same ids).

    Each answer is also scored by the source: the per-token NLL it gives the artifact's answer and its
    own, after the same prompt. Their difference is how much more surprising the model you gave finds
    what the shipped file says than what it says itself: 0 for the same answer, small for a near-tie
    taken the other way (the rest is then the source's own continuation), large for an answer the
    source would never give ("La femme de France" for the capital of France). Perplexity over a
    text cannot see that: the answer can go wrong on one early token the text barely weighs.

    `source_file`, when given, is the source's own file in the artifact's format, loaded by the same
    runtime: its answers, scored the same way, are what the model you gave says in that runtime with
    nothing of ours in between (`own_file_answer`)."""
    rows = []
    own_prompts = [source.own_chat_ids(prompt) for prompt in prompts]
    for prompt, own_prompt, src_ids in zip(prompts, own_prompts, source.greedy_many(own_prompts, new_tokens)):
        art_ids = source.until_stop(source.full_ids(artifact.generate(source.chat_ids(prompt), new_tokens).tokens))
        mine = _Scored(source, own_prompt, src_ids)
        art_lp, art_mean, art_pct = mine.score(art_ids)
        row = {"prompt": prompt, "source": source.answer(src_ids), "artifact": source.answer(art_ids),
               "same": src_ids == art_ids, "source_nll_per_token": mine.mean, "artifact_nll_per_token": art_mean,
               "source_tokens": len(src_ids), "artifact_tokens": len(art_ids), "ppl_vs_source_pct": art_pct,
               "chat_template": bool(source.tokenizer.chat_template)}
        row.update(parting(source, src_ids, art_ids, mine.lp, art_lp))
        if source_file is not None:
            row.update(own_file_answer(source, source_file, own_prompt, mine, new_tokens))
        rows.append(row)
    return rows


class _Scored:
    """The source's own answer to one prompt, and any other answer to it scored against that: the
    per-token NLL the source gives it after the same prompt, and how much more perplexing that is."""

    def __init__(self, source: SourceRunner, own_prompt: list[int], ids: list[int]):
        self.source, self.own_prompt, self.ids = source, own_prompt, ids
        self.lp = source.answer_logprobs(own_prompt, ids)
        self.mean = float(-self.lp.sum()) / max(len(ids), 1)

    def score(self, ids: list[int]) -> tuple["np.ndarray", float, float]:
        """(log-probabilities, per-token NLL, % more perplexing than the source's own) of `ids`."""
        lp = self.lp if ids == self.ids else self.source.answer_logprobs(self.own_prompt, ids)
        mean = float(-lp.sum()) / max(len(ids), 1)
        return lp, mean, (math.exp(mean - self.mean) - 1.0) * 100.0


def own_file_answer(source: SourceRunner, runner, own_prompt: list[int], mine: _Scored,
                    new_tokens: int = ANSWER_TOKENS) -> dict[str, object]:
    """The greedy answer of the source's own file through the artifact's runtime, scored as the
    artifact's is. Why: a runtime's arithmetic (llama.cpp rounds activations to 8 bits in its
    quantized products) can take a near-tie the other way on the very weights the user gave, so the
    answer line compared with this says how much of a shipped file's answer is the build's doing."""
    ids = source.until_stop(runner.generate(own_prompt, new_tokens).tokens)
    return {"source_file": source.answer(ids), "source_file_same": ids == mine.ids,
            "source_file_ppl_vs_source_pct": mine.score(ids)[2]}


def parting(source: SourceRunner, src_ids: list[int], art_ids: list[int], src_lp, art_lp) -> dict[str, object]:
    """Where two answers part, and how sure the source was there: both answers share every earlier
    id, so at that token the source's probability of its own choice and of the shipped file's are
    read after the same prefix. When the shipped file's token has at least NEAR_TIE of the source's
    own, the source itself was near a coin flip there: the default model answers "What is the capital
    of France?" with "The" at 15 % against "L" at 14 %, and its own Q4_1 file, run by llama.cpp,
    answers in French. The answer line still scores the whole answer; this only says whose doubt
    the parting was."""
    at = next((i for i, (a, b) in enumerate(zip(src_ids, art_ids)) if a != b), None)
    if at is None:
        return {}
    p_own, p_art = math.exp(float(src_lp[at])), math.exp(float(art_lp[at]))
    return {"parts_at": at, "source_token": source.tokenizer.decode([src_ids[at]]),
            "artifact_token": source.tokenizer.decode([art_ids[at]]),
            "source_p_own": p_own, "source_p_artifact": p_art, "near_tie": p_art >= NEAR_TIE * p_own}


def answer_metrics(rows: list[dict[str, object]]) -> dict[str, float]:
    """The answers' figures for bench.json and the budget: the worst prompt is the budget's line (one
    broken answer is what a person notices), the mean is shown beside it."""
    increases = [float(r["ppl_vs_source_pct"]) for r in rows]
    out = {"answer_ppl_vs_source_pct": max(increases), "answer_ppl_vs_source_mean_pct": sum(increases) / len(increases),
           "answers_same": sum(bool(r["same"]) for r in rows), "answers_total": len(rows)}
    if rows and all("source_file_ppl_vs_source_pct" in r for r in rows):
        own = [float(r["source_file_ppl_vs_source_pct"]) for r in rows]
        out.update(answer_source_file_ppl_vs_source_pct=max(own), answer_source_file_ppl_vs_source_mean_pct=sum(own) / len(own),
                   answers_no_worse_than_source_file=sum(bool(r["same"]) or a <= o for r, a, o in zip(rows, increases, own)))
    return out
