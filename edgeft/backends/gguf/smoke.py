"""Proves that the installed llama.cpp build runs on this host: a real batch and decode at several quant types.

An import proves nothing: a build with an instruction set the host refuses loads fine and dies on
its first batch. Each quant type has its own kernels, and AMX (the set seen to fault) runs only on
batched matrix products, so each level quantizes the default model, evaluates a prompt of
PROMPT_TOKENS tokens in one batch and decodes a few tokens, in a child process of its own, so a
crash is named (`edgeft.child`) instead of taking the caller down. `make setup` runs it once per
build and host (stamped in the venv); `edgeft doctor` runs it every time.

Run as `python -m edgeft.backends.gguf.smoke [--stamp]`: exit 0 when every level passes, else one line
saying what to do, exit 1.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

SMOKE_QUANTS = ("q4_0", "q8_0", "q4_k_m")
PROMPT_TOKENS = 64  # a 5-token prompt passes the faulting AMX build; 64 tokens crash it
NEW_TOKENS = 8
STAMP_NAME = ".edgeft-llama-smoke.json"


def system_info() -> str:
    """llama.cpp's own list of the instruction sets and features this build uses (`AVX2 = 1 | ...`)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def fingerprint() -> dict[str, object]:
    """What identifies this runtime build, for bench.json: a baseline measured on another build shows it."""
    import llama_cpp

    from edgeft.backends.gguf.llama_build import read_stamp

    # The venv's stamp describes the venv's own llama_cpp, not one put first on PYTHONPATH.
    ours = Path(llama_cpp.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())
    stamp = (read_stamp(Path(sys.prefix)) if ours else None) or {}
    return {"llama-cpp-python": llama_cpp.__version__, "system_info": system_info(),
            "build_flags": stamp.get("enabled"), "build_key": stamp.get("key")}


def _probe_level(model: Path, quant: str, work: Path, threads: int) -> dict:
    """In the child: quantize `model` to `quant` with llama.cpp, evaluate a PROMPT_TOKENS batch, decode."""
    from llama_cpp import Llama

    from edgeft.backends.gguf.backend import _quantize_native
    from edgeft.bench.prompt import prompt_ids

    start = time.perf_counter()
    out = work / f"smoke-{quant}.gguf"
    # The default model ships quantized: requantized, each level still runs its own kernels.
    rc, said = _quantize_native(model, out, quant, threads, allow_requantize=True)
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantize to {quant} (return code {rc}: {said})")
    llm = Llama(model_path=str(out), n_ctx=256, n_batch=256, n_threads=threads, n_threads_batch=threads,
                verbose=False, seed=0)
    try:
        ids = prompt_ids(lambda text: llm.tokenize(text.encode(), add_bos=False, special=True), PROMPT_TOKENS)
        tokens = []
        for tok in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
            tokens.append(int(tok))
            if len(tokens) >= NEW_TOKENS:
                break
    finally:
        llm.close()
        out.unlink(missing_ok=True)
    return {"quant": quant, "ok": True, "prompt_tokens": len(ids), "new_tokens": len(tokens),
            "seconds": round(time.perf_counter() - start, 2)}


def probe(model: Path | None = None, quants: tuple[str, ...] = SMOKE_QUANTS, threads: int = 1) -> dict:
    """Every level in its own child; a crash of one is recorded, and the others still run."""
    from edgeft.child import ChildFailed, NativeCrash, call

    if model is None:
        from edgeft.models import default_model_path

        model = default_model_path()
    levels = []
    with tempfile.TemporaryDirectory(prefix="edgeft-smoke-") as tmp:
        for quant in quants:
            try:
                levels.append(call(_probe_level, Path(model), quant, Path(tmp), threads,
                                   what=f"llama.cpp at {quant} on a {PROMPT_TOKENS}-token prompt"))
            except (NativeCrash, ChildFailed) as exc:
                levels.append({"quant": quant, "ok": False, "error": str(exc)})
    return {"ok": all(level["ok"] for level in levels), "model": str(model), "prompt_tokens": PROMPT_TOKENS,
            "levels": levels}


def host_key() -> str:
    """This host as far as the build cares: the CPU model and the flags it advertises."""
    from edgeft.backends.gguf.llama_build import cpu_flags
    from edgeft.bench.machine import cpu_model

    return hashlib.sha256(json.dumps([cpu_model(), sorted(cpu_flags())]).encode()).hexdigest()[:16]


def advice(result: dict) -> str:
    failed = [level for level in result["levels"] if not level["ok"]]
    first = failed[0]
    return (f"the llama.cpp build in {sys.prefix} fails on this host ({first['quant']}: {first['error']}); "
            "rebuild it with a lower instruction-set ceiling: `make setup LLAMA_ISA=avx2` (then avx, sse42)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from edgeft.backends.gguf.llama_build import read_stamp

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stamp", action="store_true",
                        help="skip when this venv's build already passed on this host; record a pass")
    args = parser.parse_args(argv)
    venv = Path(sys.prefix)
    key = {"build": (read_stamp(venv) or {}).get("key"), "host": host_key()}
    stamp = venv / STAMP_NAME
    if args.stamp and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("key") == key:
                return 0
        except ValueError:
            pass
    result = probe()
    if not result["ok"]:
        print(f"edgeft: {advice(result)}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{level['quant']} {level['seconds']:.1f} s" for level in result["levels"])
    print(f"llama.cpp smoke test passed on a {PROMPT_TOKENS}-token prompt: {shown}", flush=True)
    if args.stamp:
        stamp.write_text(json.dumps({"key": key, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
