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
    meta = runner.metadata() if hasattr(runner, "metadata") else {}
    eos_ok = str(tok.eos_token_id) == str(meta.get("tokenizer.ggml.eos_token_id", tok.eos_token_id))
    template_ok = (tok.chat_template or "") == (meta.get("tokenizer.chat_template", tok.chat_template) or "")
    report = {"texts": len(texts), "token_mismatches": len(mismatches), "eos_matches": eos_ok, "chat_template_matches": template_ok}
    if mismatches or not eos_ok or not template_ok:
        what = []
        if mismatches:
            what.append(f"tokenization differs on {len(mismatches)} of {len(texts)} texts (first: {mismatches[0][:40]!r})")
        if not eos_ok:
            what.append("EOS id differs")
        if not template_ok:
            what.append("chat template differs")
        raise ParityError("exported model does not match its source: " + "; ".join(what))
    return report


# Relative max-abs logit error allowed for an unquantized export; quantized levels are measured, not gated.
OUTPUT_TOLERANCE = {"f32": 1e-3, "fp32": 1e-3, "f16": 2e-2, "fp16": 2e-2, "bf16": 5e-2}


def check_outputs(hf_dir: Path, runner, quant: str) -> dict:
    """Run the source model (transformers, fp32) and the artifact on the same fixed prompts.

    Unquantized exports must match within OUTPUT_TOLERANCE (else ParityError with the max
    difference); quantized ones report their top-1 agreement with the source."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft.progress import quiet_libraries

    quiet_libraries()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    worst = 0.0
    agree = total = 0
    for text in CHECK_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        got = np.asarray(runner.logits(ids), dtype=np.float32)
        worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)))
        agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
        total += len(ids)
    report = {"max_rel_logit_error": worst, "top1_agreement": agree / total, "positions": total}
    limit = OUTPUT_TOLERANCE.get(quant)
    if limit is not None:
        report["tolerance"] = limit
        if worst > limit:
            raise ParityError(f"exported {quant} model's logits differ from the source: max relative error {worst:.2e} > {limit:.0e}")
    return report


def check_export(hf_dir: Path, artifact: "Artifact", target: "Target") -> dict:
    """Tokenizer parity, then outputs against the source, with the artifact loaded in this process."""
    from edgeft.backends.registry import get_backend

    runner = get_backend(target.backend).load(artifact, target)
    try:
        report = check_tokenizer_parity(hf_dir, runner)
        report["outputs"] = check_outputs(hf_dir, runner, target.quant)
    finally:
        runner.close()
    return report


def run_check(hf_dir: Path, artifact: "Artifact", target: "Target") -> dict:
    """`check_export` in a child process, like the bench: the runtime's native code (a build that
    faults on this CPU, a corrupt file) can end the child, never the CLI; the crash becomes one line."""
    from edgeft.child import call

    return call(check_export, hf_dir, artifact, target, what=f"the export check of {artifact.path.name}")
