"""After export: does the artifact still tokenize, template and stop like the model it came from?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.errors import ParityError

if TYPE_CHECKING:
    from edgeft.backends.base import Artifact
    from edgeft.config import Target

CHECK_TEXTS = [
    "What is the capital of France?",
    "def f(x):\n    return x * 2  # doubles\n",
    "天气很好，我们去公园散步吧。",
    "Numbers 1234567 and emoji 🙂🚀, spaces   and\ttabs.",
]


def check_tokenizer_parity(hf_dir: Path, runner) -> dict:
    """Compare token ids, the chat template's rendering and the EOS id between HF and the artifact."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    mismatches = []
    texts = list(CHECK_TEXTS)
    if tok.chat_template:
        texts.append(tok.apply_chat_template([{"role": "user", "content": CHECK_TEXTS[0]}], add_generation_prompt=True, tokenize=False))
    for text in texts:
        ref = tok(text, add_special_tokens=False)["input_ids"]
        got = runner.tokenize(text)
        if ref != got:
            mismatches.append(text)
    meta = runner.metadata()
    eos_ok = tok.eos_token_id is None or meta.eos_token_id == tok.eos_token_id
    template_ok = (tok.chat_template or None) is None or meta.chat_template == tok.chat_template
    vocab = _source_vocab_size(hf_dir)
    vocab_ok = vocab is None or meta.vocab_size is None or meta.vocab_size == vocab
    report = {"texts": len(texts), "token_mismatches": len(mismatches), "eos_matches": eos_ok, "chat_template_matches": template_ok,
              "vocab_matches": vocab_ok}
    if mismatches or not eos_ok or not template_ok or not vocab_ok:
        what = []
        if mismatches:
            what.append(f"tokenization differs on {len(mismatches)} of {len(texts)} texts (first: {mismatches[0][:40]!r})")
        if not eos_ok:
            what.append("the artifact records no EOS id" if meta.eos_token_id is None else
                        f"EOS id differs ({meta.eos_token_id} vs the source's {tok.eos_token_id})")
        if not template_ok:
            what.append("the artifact records no chat template" if meta.chat_template is None else "chat template differs")
        if not vocab_ok:
            what.append(f"vocabulary size differs ({meta.vocab_size} vs the source's {vocab})")
        raise ParityError("exported model does not match its source: " + "; ".join(what))
    return report


def _source_vocab_size(hf_dir: Path) -> int | None:
    import json

    try:
        value = json.loads((hf_dir / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


def long_tokens(context: int, hf_dir: Path) -> int:
    """The long input's length: 1,000 tokens (a rope or position mistake shows at long positions,
    not in four short texts), or a quarter of a longer context; never past the context or the
    positions the model was trained for."""
    import json

    try:
        trained = int(json.loads((hf_dir / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings") or context)
    except (OSError, ValueError, TypeError):
        trained = context
    return min(context, trained, max(1000, context // 4))


def check_outputs(hf_dir: Path, runner, quant: str, limit: float | None, long_input: int = 0) -> dict:
    """Run the source model (transformers, fp32) and the artifact on the same fixed prompts, and on
    one `long_input`-token text (the shipped evaluation text) when it is nonzero.

    An unquantized export must match within `limit`, the backend's tolerance for its level (else
    ParityError with the max difference); quantized ones report their top-1 agreement with the source."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft.progress import quiet_libraries

    quiet_libraries()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    worst = 0.0
    agree = total = 0
    inputs = [tok(text, add_special_tokens=False)["input_ids"] for text in CHECK_TEXTS]
    if long_input:
        from edgeft.bench.prompt import eval_text

        text_ids = tok(eval_text(), add_special_tokens=False)["input_ids"]
        inputs.append((text_ids * (long_input // max(1, len(text_ids)) + 1))[:long_input])
    for ids in inputs:
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        got = np.asarray(runner.logits(ids), dtype=np.float32)
        worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)))
        agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
        total += len(ids)
    report = {"max_rel_logit_error": worst, "top1_agreement": agree / total, "positions": total,
              "long_input_tokens": long_input}
    if limit is not None:
        report["tolerance"] = limit
        if worst > limit:
            raise ParityError(f"exported {quant} model's logits differ from the source: max relative error {worst:.2e} > {limit:.0e}")
    return report


def check_export(hf_dir: Path, artifact: "Artifact", target: "Target") -> dict:
    """Tokenizer parity, then outputs against the source, with the artifact loaded in this process."""
    from edgeft.backends.registry import get_backend, info

    runner = get_backend(artifact.backend).load(artifact, target)
    try:
        report = check_tokenizer_parity(hf_dir, runner)
        report["outputs"] = check_outputs(hf_dir, runner, artifact.quant, info(artifact.backend).tolerances.get(artifact.quant),
                                          long_tokens(target.bench.context, hf_dir))
    finally:
        runner.close()
    return report


def run_check(hf_dir: Path, artifact: "Artifact", target: "Target") -> dict:
    """`check_export` in a child process, like the bench: the runtime's native code (a build that
    faults on this CPU, a corrupt file) can end the child, never the CLI; the crash becomes one line."""
    from edgeft.child import call

    return call(check_export, hf_dir, artifact, target, what=f"the export check of {artifact.path.name}")
