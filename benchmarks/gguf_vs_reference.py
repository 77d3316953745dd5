"""Our q4_k_m GGUF of the default model against the reference path a user has today.

Reference: llama.cpp's `convert_hf_to_gguf.py`, taken from the llama-cpp-python source
distribution of the installed version (fetched with `pip download` into a cache folder outside
the repository and run from there, never copied into it), `--outtype f16`, then the same
llama.cpp quantizer we use. Both start from the same dequantized HF folder our pipeline builds
from the default model.

Measured: file size ratio (ours / reference), decode tokens/s ratio (same threads, same prompt,
runs interleaved ours/ref/ours/ref, warm-up discarded, medians), perplexity of each on
edgeft/assets/eval.txt (tokenized once with the model's tokenizer, sliding windows that fit the
context), whether both files tokenize identically, the metadata keys that differ, and whether
the tensors are byte-identical. JSON goes to --out first, then a table is printed.

    PYTHONPATH=. .venv/bin/python benchmarks/gguf_vs_reference.py [--runs 10] [--threads N]

Needs `sentencepiece` (the reference converter imports it; `pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_info import DEFAULT_RESULTS, BenchError, busy_line, cache_dir, environment_at_end, run_header, table  # noqa: E402

QUANT = "q4_k_m"
GOALS = {"size_pct": 1.0, "decode_speed_pct": 3.0, "perplexity_pct": 0.5}  # from issue 2
# Strings whose tokenization must agree, beyond the evaluation text: scripts, code, emoji,
# runs of whitespace and the special tokens the chat template uses.
TOKENIZER_TEXTS = [
    "What is the capital of France?",
    "def f(x):\n    return x * 2  # doubles\n",
    "天气很好，我们去公园散步吧。",
    "Numbers 1234567 and emoji 🙂🚀, spaces   and\ttabs.",
    "    \n\n\n  leading and trailing   \n",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>A<|endoftext|>",
    "Ünïcödé ñ café naïve — “quotes” ‘single’ …",
    "x=1;y=2\r\nif(x<y){return y-x;}",
    "Здравствуйте, мир! مرحبا بالعالم नमस्ते",
    "3.14159 1e-10 0x1F 1,000,000",
]


# ----------------------------------------------------------------------------- reference tool

def reference_tool(cache: Path, version: str) -> Path:
    """The llama.cpp folder (converter, conversion/, gguf-py/) from the llama-cpp-python sdist."""
    from edgeft.atomic_io import atomic_dir

    root = cache / f"llama-cpp-python-{version}"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    sdist_dir = cache / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        _status(f"fetching the llama-cpp-python {version} source distribution ...")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", str(sdist_dir)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0 or not sdist.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"{sdist}: pip download of llama-cpp-python=={version} failed: {last}")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
    with tarfile.open(sdist) as tar, atomic_dir(root) as tmp:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
            if rel and rel.startswith(wanted) and (m.isfile() or m.isdir()):
                m.name = rel
                members.append(m)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise BenchError(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
        tar.extractall(tmp, members=members, filter="data")
    return root


# The reference names a BPE pre-tokenizer by hashing how the tokenizer splits a test string, so a
# random tiny tokenizer is "not recognized". With `pre`, that one lookup answers the name instead.
_PRE_WRAPPER = """import runpy, sys
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def reference_convert(tool: Path, hf_dir: Path, out: Path, outtype: str = "f16", *, pre: str | None = None) -> dict:
    """llama.cpp's converter on `hf_dir`; `pre`: the pre-tokenizer name to give it (see _PRE_WRAPPER)."""
    from edgeft.atomic_io import atomic_path

    try:
        import sentencepiece  # noqa: F401  (the reference converter imports it for every llama model)
    except ImportError:
        raise BenchError(f"{tool / 'convert_hf_to_gguf.py'}: needs the sentencepiece package (pip install -e .[bench])") from None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tool / "gguf-py"), str(tool)]), HF_HUB_OFFLINE="1")
    env.pop("NO_LOCAL_GGUF", None)
    with atomic_path(out) as tmp:
        t = time.perf_counter()
        script = [str(tool / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype, "--outfile", str(tmp)]
        launcher = [sys.executable] if pre is None else [sys.executable, "-c", _PRE_WRAPPER.format(pre=pre)]
        proc = subprocess.run([*launcher, *script], capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"{tool / 'convert_hf_to_gguf.py'}: failed on {hf_dir} (exit {proc.returncode}): {last}")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    return {"seconds": round(seconds, 2), "warnings": warnings, "gguf_py_version": _gguf_py_version(tool)}


def _gguf_py_version(tool: Path) -> str | None:
    text = (tool / "gguf-py" / "pyproject.toml").read_text(encoding="utf-8") if (tool / "gguf-py" / "pyproject.toml").is_file() else ""
    for line in text.splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return None


# ----------------------------------------------------------------------------- building

def source_hf_dir(cache: Path) -> tuple[Path, dict]:
    """The dequantized HF folder our pipeline starts from, cached per source-file hash."""
    from edgeft import models
    from edgeft.manifest import sha256

    source = models.resolve("default")
    digest = sha256(source.path)
    # The folder is named after the model: the reference converter derives general.name from it.
    hf_dir = cache / f"hf-default-{digest[:16]}" / source.path.stem
    if not (hf_dir / "config.json").is_file():
        _status("dequantizing the default model into a Hugging Face folder ...")
        models.materialize_hf(source, hf_dir)
    return hf_dir, {"label": source.label, "path": str(source.path), "sha256": digest, "name": source.path.stem}


def build_both(cache: Path, hf_dir: Path, name: str, threads: int, version: str) -> dict:
    from edgeft.backends.gguf.backend import quantize
    from edgeft.backends.gguf.convert import convert

    work = cache / "gguf"
    paths = {
        "ours_f16": work / "ours-f16.gguf", "ref_f16": work / "ref-f16.gguf",
        "ours": work / f"ours-{QUANT}.gguf", "ref": work / f"ref-{QUANT}.gguf",
    }
    timings: dict[str, float] = {}
    _status("converting with edgeft ...")
    t = time.perf_counter()
    convert(hf_dir, paths["ours_f16"], "f16", name=name)  # what `edgeft build` does
    timings["ours_convert_s"] = round(time.perf_counter() - t, 2)
    _status("converting with the reference convert_hf_to_gguf.py ...")
    tool = reference_tool(cache, version)
    ref_info = reference_convert(tool, hf_dir, paths["ref_f16"])
    timings["ref_convert_s"] = ref_info["seconds"]
    for who in ("ours", "ref"):
        _status(f"quantizing {who} to {QUANT} ...")
        t = time.perf_counter()
        with _c_output_to(cache / f"quantize-{who}.log"):
            quantize(paths[f"{who}_f16"], paths[who], QUANT, threads=threads)
        timings[f"{who}_quantize_s"] = round(time.perf_counter() - t, 2)
    return {"paths": paths, "timings": timings, "reference_tool": {"path": str(tool), **ref_info}}


@contextlib.contextmanager
def _c_output_to(log: Path):
    """llama.cpp's quantizer prints a line per tensor from C; keep it in a log, not on the table."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "wb") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


# ----------------------------------------------------------------------------- file comparison

def _field_value(field):
    try:
        return field.contents()
    except Exception:  # an unusual type the installed reader cannot decode: compare raw bytes
        return [bytes(p) for p in field.parts]


def _describe(value) -> object:
    """A short, JSON-safe view of a metadata value (long strings and arrays by length and hash)."""
    if isinstance(value, list):
        digest = hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:12]
        return value if len(value) <= 8 else f"array[{len(value)}] sha256:{digest}"
    if isinstance(value, str) and len(value) > 120:
        return f"str[{len(value)}] {value[:60]!r}… sha256:{hashlib.sha256(value.encode()).hexdigest()[:12]}"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return value


def _array_diff(a: list, b: list) -> str:
    if len(a) != len(b):
        return f"length {len(a)} vs {len(b)}"
    diffs = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return f"{len(diffs)} of {len(a)} entries differ (first at {diffs[0]}: {a[diffs[0]]!r} vs {b[diffs[0]]!r})"


def compare_files(ours: Path, ref: Path) -> dict:
    """Metadata keys that differ, and the tensors: same names, types, shapes, bytes?"""
    import numpy as np
    from gguf import GGUFReader

    a, b = GGUFReader(ours), GGUFReader(ref)
    fa = {k: _field_value(v) for k, v in a.fields.items()}
    fb = {k: _field_value(v) for k, v in b.fields.items()}
    only_ours = {k: _describe(fa[k]) for k in sorted(fa.keys() - fb.keys())}
    only_ref = {k: _describe(fb[k]) for k in sorted(fb.keys() - fa.keys())}
    different = {}
    for k in sorted(fa.keys() & fb.keys()):
        if fa[k] != fb[k]:
            entry = {"ours": _describe(fa[k]), "ref": _describe(fb[k])}
            if isinstance(fa[k], list) and isinstance(fb[k], list):
                entry["diff"] = _array_diff(fa[k], fb[k])
            different[k] = entry

    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    common = sorted(ta.keys() & tb.keys())
    type_diff, shape_diff, byte_diff = [], [], []
    max_abs = 0.0
    for name in common:
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type:
            type_diff.append({"tensor": name, "ours": x.tensor_type.name, "ref": y.tensor_type.name})
            continue
        if list(x.shape) != list(y.shape):
            shape_diff.append({"tensor": name, "ours": [int(s) for s in x.shape], "ref": [int(s) for s in y.shape]})
            continue
        if not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            byte_diff.append(name)
            if x.tensor_type.name in ("F32", "F16"):
                d = np.abs(np.asarray(x.data, dtype=np.float32) - np.asarray(y.data, dtype=np.float32))
                max_abs = max(max_abs, float(d.max()))
    types_ours: dict[str, int] = {}
    for t in a.tensors:
        types_ours[t.tensor_type.name] = types_ours.get(t.tensor_type.name, 0) + 1
    return {
        "bytes": {"ours": ours.stat().st_size, "ref": ref.stat().st_size},
        "metadata": {"only_ours": only_ours, "only_ref": only_ref, "different": different},
        "tensors": {
            "count": {"ours": len(ta), "ref": len(tb)},
            "only_ours": sorted(ta.keys() - tb.keys()),
            "only_ref": sorted(tb.keys() - ta.keys()),
            "type_differs": type_diff,
            "shape_differs": shape_diff,
            "bytes_differ": byte_diff,
            "identical": len(common) - len(type_diff) - len(shape_diff) - len(byte_diff),
            "max_abs_diff_unquantized": max_abs,
            "types_ours": types_ours,
        },
    }


# ----------------------------------------------------------------------------- runtime comparison

def tokenization(runners: dict, hf_tok, texts: list[str]) -> dict:
    mismatches = []
    for text in texts:
        ids = {who: r.tokenize(text) for who, r in runners.items()}
        hf = hf_tok(text, add_special_tokens=False)["input_ids"]
        if ids["ours"] != ids["ref"] or ids["ours"] != hf:
            mismatches.append({"text": text[:60], "ours": ids["ours"][:20], "ref": ids["ref"][:20], "hf": hf[:20],
                               "ours_eq_ref": ids["ours"] == ids["ref"], "ours_eq_hf": ids["ours"] == hf, "ref_eq_hf": ids["ref"] == hf})
    identical = not any(not m["ours_eq_ref"] for m in mismatches)
    return {"texts": len(texts), "ours_equals_ref": identical, "mismatches": mismatches}


def perplexity(runner, ids: list[int], window: int) -> dict:
    """Sliding windows of `window` tokens, stride window/2; each token scored once, with as
    much left context as the window allows (the first token has no prediction)."""
    import numpy as np

    stride = max(1, window // 2)
    nll = 0.0
    scored = 0
    prev_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        chunk = ids[begin:end]
        logits = runner.logits(chunk).astype(np.float64)  # [len(chunk), vocab]
        first = max(prev_end, begin + 1) - begin  # first position in the chunk not scored yet
        lg = logits[first - 1 : len(chunk) - 1]  # row i predicts token i+1
        targets = np.asarray(chunk[first:])
        m = lg.max(axis=1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(lg - m).sum(axis=1)))
        nll -= float((lg[np.arange(len(targets)), targets] - logz).sum())
        scored += len(targets)
        prev_end = end
        if end == len(ids):
            break
    return {"ppl": math.exp(nll / scored), "nll_mean": nll / scored, "tokens_scored": scored}


def speed(runners: dict, prompt: list[int], new_tokens: int, runs: int, warmup: int) -> dict:
    """Greedy decoding, interleaved ours/ref/ours/ref so machine noise hits both alike."""
    from edgeft.bench.latency import latency_metrics

    raw = {who: [] for who in runners}
    outputs = {}
    for i in range(warmup + runs):
        for who, runner in runners.items():
            gen = runner.generate(prompt, new_tokens)
            outputs.setdefault(who, gen.tokens)
            if i >= warmup:
                raw[who].append({"token_times": gen.token_times, "n_tokens": len(gen.tokens)})
    result: dict = {}
    per_run = {}
    for who, run_list in raw.items():
        metrics, per_run[who] = latency_metrics({"runs": run_list, "prompt_tokens": len(prompt), "peak_rss_mb": 0.0, "rss_before_load_mb": 0.0})
        metrics.pop("peak_rss_mb")
        metrics.pop("model_rss_mb")
        metrics["decode_tok_s_runs"] = [round(r["decode_tok_s"], 3) for r in per_run[who]]
        result[who] = metrics
    # run i of ours and run i of ref ran back to back: their ratio cancels slow drifts in load
    paired = [o["decode_tok_s"] / r["decode_tok_s"] for o, r in zip(per_run["ours"], per_run["ref"])]
    result["ratio_of_medians"] = result["ours"]["decode_tok_s_p50"] / result["ref"]["decode_tok_s_p50"]
    result["median_paired_ratio"] = statistics.median(paired)
    result["greedy_outputs_identical"] = outputs["ours"] == outputs["ref"]
    return result


def measure(paths: dict, hf_dir: Path, args) -> dict:
    from transformers import AutoTokenizer

    from edgeft.backends.gguf.backend import LlamaCppRunner
    from edgeft.bench.prompt import eval_text, prompt_ids

    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    text = eval_text()
    eval_ids = hf_tok(text)["input_ids"]  # tokenized once, fed to both files
    prompt = prompt_ids(lambda t: hf_tok(t, add_special_tokens=False)["input_ids"], args.prompt_tokens)
    out: dict = {"eval_tokens": len(eval_ids), "ppl_window": args.ppl_window}

    ctx = max(args.ppl_window, args.prompt_tokens + args.new_tokens)
    runners = {who: LlamaCppRunner(paths[who], threads=args.threads, context=ctx) for who in ("ours", "ref")}
    try:
        _status("comparing tokenization ...")
        out["tokenization"] = tokenization(runners, hf_tok, [text, *TOKENIZER_TEXTS, _chat_render(hf_tok)])
        _status(f"perplexity on eval.txt ({len(eval_ids)} tokens) ...")
        out["perplexity"] = {who: perplexity(r, eval_ids, args.ppl_window) for who, r in runners.items()}
        _status(f"decode speed: {args.warmup} warm-up + {args.runs} runs each, interleaved ...")
        out["speed"] = speed(runners, prompt, args.new_tokens, args.runs, args.warmup)
    finally:
        for r in runners.values():
            r.close()
    if not args.skip_f16:
        _status("perplexity of the f16 intermediates (converter effect without quantization) ...")
        out["perplexity_f16"] = {}
        for who in ("ours", "ref"):
            r = LlamaCppRunner(paths[f"{who}_f16"], threads=args.threads, context=args.ppl_window)
            try:
                out["perplexity_f16"][who] = perplexity(r, eval_ids, args.ppl_window)
            finally:
                r.close()
    return out


def _chat_render(tok) -> str:
    if not tok.chat_template:
        return "no chat template"
    return tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)


# ----------------------------------------------------------------------------- report

def summarize(result: dict) -> dict:
    files = result["files"][QUANT]
    size_ratio = files["bytes"]["ours"] / files["bytes"]["ref"]
    m = result["measurements"]
    speed_ratio = m["speed"]["ratio_of_medians"]
    ppl_diff = 100.0 * (m["perplexity"]["ours"]["ppl"] / m["perplexity"]["ref"]["ppl"] - 1.0)
    return {
        "size_ratio": size_ratio,
        "decode_speed_ratio": speed_ratio,
        "perplexity_diff_pct": ppl_diff,
        "goal_size_met": abs(size_ratio - 1.0) * 100 <= GOALS["size_pct"],
        "goal_speed_met": abs(speed_ratio - 1.0) * 100 <= GOALS["decode_speed_pct"],
        "goal_perplexity_met": abs(ppl_diff) <= GOALS["perplexity_pct"],
        "tokenize_identically": m["tokenization"]["ours_equals_ref"],
        "greedy_outputs_identical": m["speed"]["greedy_outputs_identical"],
        "metadata_keys_differing": sorted(
            list(files["metadata"]["only_ours"]) + list(files["metadata"]["only_ref"]) + list(files["metadata"]["different"])
        ),
        "tensors_identical": f"{files['tensors']['identical']} of {files['tensors']['count']['ours']}",
        "goals": GOALS,
    }


def print_report(result: dict) -> None:
    s, m = result["summary"], result["measurements"]
    f = result["files"][QUANT]
    sp = m["speed"]
    rows = [
        ["file size (MB)", f["bytes"]["ours"] / 1e6, f["bytes"]["ref"] / 1e6, s["size_ratio"], f"±{GOALS['size_pct']}%", s["goal_size_met"]],
        ["decode tok/s p50", sp["ours"]["decode_tok_s_p50"], sp["ref"]["decode_tok_s_p50"], s["decode_speed_ratio"], f"±{GOALS['decode_speed_pct']}%", s["goal_speed_met"]],
        ["decode tok/s cv", sp["ours"]["decode_tok_s_cv"], sp["ref"]["decode_tok_s_cv"], None, "", ""],
        ["ttft ms p50", sp["ours"]["ttft_ms_p50"], sp["ref"]["ttft_ms_p50"], sp["ours"]["ttft_ms_p50"] / sp["ref"]["ttft_ms_p50"], "", ""],
        [f"perplexity ({QUANT})", m["perplexity"]["ours"]["ppl"], m["perplexity"]["ref"]["ppl"],
         m["perplexity"]["ours"]["ppl"] / m["perplexity"]["ref"]["ppl"], f"±{GOALS['perplexity_pct']}%", s["goal_perplexity_met"]],
    ]
    if "perplexity_f16" in m:
        p = m["perplexity_f16"]
        rows.append(["perplexity (f16)", p["ours"]["ppl"], p["ref"]["ppl"], p["ours"]["ppl"] / p["ref"]["ppl"], "", ""])
    t = result["build_timings"]
    rows.append(["convert to f16 (s)", t["ours_convert_s"], t["ref_convert_s"], t["ours_convert_s"] / t["ref_convert_s"], "", ""])
    print(table(rows, ["metric", "ours", "reference", "ours/ref", "goal", "met"]))
    print()
    print(f"tokenize identically: {'yes' if s['tokenize_identically'] else 'NO'} ({m['tokenization']['texts']} texts); "
          f"greedy outputs identical: {'yes' if s['greedy_outputs_identical'] else 'no'}; "
          f"tensors byte-identical ({QUANT}): {s['tensors_identical']}")
    md = f["metadata"]
    print(f"metadata keys only in ours: {', '.join(md['only_ours']) or '-'}")
    print(f"metadata keys only in ref:  {', '.join(md['only_ref']) or '-'}")
    print(f"metadata keys differing:    {', '.join(md['different']) or '-'}")
    env = result["environment"]
    print(f"threads {result['settings']['threads']}, runs {result['settings']['runs']} (+{result['settings']['warmup']} warm-up), {busy_line(env)}")


def _status(message: str) -> None:
    from edgeft.progress import status

    status(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from edgeft.config import BenchSettings

    defaults = BenchSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_RESULTS / "gguf_vs_reference.json"), help="JSON result path")
    p.add_argument("--cache", default=None, help="cache folder for the sdist, HF folder and GGUF files (default ~/.cache/edgeft-bench)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads for both files")
    p.add_argument("--runs", type=int, default=10, help="timed generations per file (at least 10 for the closing note)")
    p.add_argument("--warmup", type=int, default=max(1, defaults.warmup), help="discarded generations per file")
    p.add_argument("--prompt-tokens", type=int, default=defaults.prompt_tokens)
    p.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    p.add_argument("--ppl-window", type=int, default=512, help="tokens per perplexity window (stride half of it)")
    p.add_argument("--skip-f16", action="store_true", help="skip the perplexity of the f16 intermediates")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for name in ("threads", "runs", "prompt_tokens", "new_tokens", "ppl_window"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (decode speed needs two tokens)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edgeft.atomic_io import write_json
    from edgeft.errors import EdgeftError
    from edgeft.progress import set_quiet

    set_quiet(args.quiet)
    try:
        header = run_header(args.threads)
        cache = cache_dir(args.cache)
        cache.mkdir(parents=True, exist_ok=True)
        version = metadata.version("llama-cpp-python")
        hf_dir, source = source_hf_dir(cache)
        built = build_both(cache, hf_dir, source["name"], args.threads, version)
        paths = built["paths"]
        files = {QUANT: compare_files(paths["ours"], paths["ref"]), "f16": compare_files(paths["ours_f16"], paths["ref_f16"])}
        measurements = measure(paths, hf_dir, args)
    except EdgeftError as exc:
        print(f"gguf_vs_reference: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"gguf_vs_reference: error: {exc}", file=sys.stderr)
        return 2
    result = {
        "benchmark": "gguf_vs_reference",
        "environment": environment_at_end(header),
        "settings": {k: getattr(args, k) for k in ("threads", "runs", "warmup", "prompt_tokens", "new_tokens", "ppl_window")} | {"quant": QUANT},
        "source_model": source,
        "reference_tool": built["reference_tool"],
        "build_timings": built["timings"],
        "files": files,
        "measurements": measurements,
        "artifacts": {k: str(v) for k, v in paths.items()},
    }
    result["summary"] = summarize(result)
    out = Path(args.out)
    write_json(out, result)
    print_report(result)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
