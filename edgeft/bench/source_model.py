"""The model the user gave, run through transformers in fp32: what every artifact is judged against.

Not through a backend: the source must be scored the same way whatever the target (GGUF, ONNX,
TensorRT), and without our converter in between, so a converter bug cannot hide in both sides.
Used inside the quality worker (`bench/worker.py`), never in the CLI process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Fixed chat prompts whose greedy answers the report shows for the source and the artifact side by
# side, so a person sees what the shipped file says before it ships.
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "Explain in one sentence what a CPU does.",
    "Write a short, friendly reply to: 'Thanks for your help yesterday!'",
)
ANSWER_TOKENS = 48


class SourceRunner:
    """`tokenize`, `logits` and greedy chat answers of an HF folder, fp32, on the CPU."""

    def __init__(self, hf_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from edgeft.progress import quiet_libraries

        quiet_libraries()
        torch.manual_seed(0)
        self.hf_dir = Path(hf_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.hf_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.hf_dir, dtype=torch.float32).eval()

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def logits(self, token_ids: list[int]) -> "np.ndarray":
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.tensor([token_ids])).logits[0].float().numpy()

    def stop_ids(self) -> set[int]:
        """End-of-turn ids: the tokenizer's EOS and the model's generation EOS (one id or a list)."""
        ids: set[int] = set()
        for value in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def chat_ids(self, prompt: str) -> list[int]:
        if not self.tokenizer.chat_template:
            return self.tokenize(prompt)
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                  tokenize=False)
        return self.tokenize(text)

    def answer(self, tokens: list[int]) -> str:
        """Generated ids up to the first end-of-turn, as text."""
        stop = self.stop_ids()
        kept = []
        for t in tokens:
            if t in stop:
                break
            kept.append(t)
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        import torch

        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=new_tokens, do_sample=False, eos_token_id=sorted(self.stop_ids()) or None,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return out[0, len(ids):].tolist()

    def close(self) -> None:
        self.model = None


def side_by_side(source: SourceRunner, artifact, prompts: tuple[str, ...] = CHAT_PROMPTS,
                 new_tokens: int = ANSWER_TOKENS) -> list[dict[str, object]]:
    """Greedy answers of the source (transformers) and of the artifact (its own runtime) to the same
    chat prompts, rendered and tokenized once with the source's tokenizer (the export check holds the
    artifact to the same ids)."""
    rows = []
    for prompt in prompts:
        ids = source.chat_ids(prompt)
        src = source.answer(source.greedy(ids, new_tokens))
        art = source.answer(artifact.generate(ids, new_tokens).tokens)
        rows.append({"prompt": prompt, "source": src, "artifact": art, "same": src == art})
    return rows
