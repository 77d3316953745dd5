"""After export: does the artifact still tokenize, template and stop like the model it came from?"""

from __future__ import annotations

from pathlib import Path

from edgeft.errors import ParityError

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
