"""Each model family's tiny random model converted by our GGUF converter and by llama.cpp's own
`convert_hf_to_gguf.py`, file against file (issue 16).

For every family the tests build (Llama with a byte-level BPE and with a SentencePiece-style BPE,
Llama 3 rope scaling, Qwen2, Qwen3, Mistral, Phi-3, Gemma 3), both converters write the same HF
folder at f32 and at f16, and the two files are compared: tensor names, types, shapes and bytes
(f32 max abs difference where the bytes differ), and the metadata keys only one side writes or
that differ. The reference converter comes from the llama-cpp-python source distribution of the
installed version, fetched at run time into a cache folder outside the repository (as
gguf_vs_reference.py does) and never copied into it. Nothing is timed.

    .venv/bin/python benchmarks/families_vs_reference.py [--families llama,gemma3] [--cache DIR]

JSON in benchmarks/results/families_vs_reference.json; one table row per family and type.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tiny family builders the tests use
from gguf_vs_reference import compare_files, reference_convert, reference_tool  # noqa: E402
from run_info import BenchError, cache_dir, table  # noqa: E402


def _families() -> dict:
    import tiny_models as tm
    from test_gguf_rope_scaling import _llama3_model

    return {
        "llama": tm.tiny_llama,
        "llama-spm": _llama_spm,
        "llama3-rope": _llama3_model,
        "qwen2": tm.tiny_qwen2,
        "qwen3": tm.tiny_qwen3,
        "mistral": tm.tiny_mistral,
        "phi3": tm.tiny_phi3,
        "phi3-partial-rotary": lambda out: tm.tiny_phi3(out, partial_rotary_factor=0.5),
        "gemma3": tm.tiny_gemma3,
    }


def _llama_spm(out: Path) -> Path:
    """Llama 2's shape of tokenizer: SentencePiece-style BPE with a prepended space and byte fallback."""
    import tiny_models as tm
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tm.make_spm_tokenizer(out, prepend=True)
    return tm._build(out, LlamaConfig, LlamaForCausalLM, 0, tok, **tm._shape(tok, 64, 2), rms_norm_eps=1e-5,
                     tie_word_embeddings=False)


def _pre(gguf_path: Path) -> str | None:
    """The BPE pre-tokenizer our file names: the one fact the reference cannot find for a tiny tokenizer."""
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.ggml.pre")
    return bytes(field.parts[-1]).decode() if field is not None else None


def compare_family(name: str, build, tool: Path, work: Path) -> dict:
    from edgeft.backends.gguf.convert import convert

    hf = work / name / "hf"
    build(hf)
    config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
    row: dict = {"family": name, "architecture": (config.get("architectures") or ["?"])[0], "types": {}}
    for outtype in ("f32", "f16"):
        ours, ref = work / name / f"ours-{outtype}.gguf", work / name / f"ref-{outtype}.gguf"
        convert(hf, ours, outtype, quiet=True)
        try:
            info = reference_convert(tool, hf, ref, outtype=outtype, pre=_pre(ours))
        except BenchError as exc:
            row["types"][outtype] = {"reference_failed": str(exc)}
            continue
        row["types"][outtype] = {"reference": info, **compare_files(ours, ref)}
    return row


def summarize(row: dict) -> list[list[str]]:
    lines = []
    for outtype, r in row.get("types", {}).items():
        if "reference_failed" in r:
            lines.append([row["family"], outtype, "reference failed", r["reference_failed"][-80:], "", "", ""])
            continue
        t, m = r["tensors"], r["metadata"]
        lines.append([
            row["family"], outtype,
            f"{t['identical']}/{t['count']['ours']} (ref {t['count']['ref']})",
            ", ".join(t["only_ours"] + [f"-{n}" for n in t["only_ref"]]) or "-",
            str(len(t["type_differs"]) + len(t["shape_differs"])) + (f"; {len(t['bytes_differ'])} bytes (max {t['max_abs_diff_unquantized']:.2g})"
                                                                     if t["bytes_differ"] else ""),
            ", ".join(list(m["only_ours"])) or "-",
            ", ".join(list(m["only_ref"]) + [f"{k}≠" for k in m["different"]]) or "-",
        ])
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=None, help="comma-separated subset of: " + ", ".join(_families()))
    p.add_argument("--cache", default=None, help="where the reference converter is unpacked (default ~/.cache/edgeft-bench)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "families_vs_reference.json")
    args = p.parse_args(argv)
    from edgeft.progress import mute_import_noise

    mute_import_noise()
    families = _families()
    chosen = args.families.split(",") if args.families else list(families)
    unknown = [f for f in chosen if f not in families]
    if unknown:
        print(f"families_vs_reference: unknown family {unknown[0]!r} (known: {', '.join(families)})", file=sys.stderr)
        return 2
    version = metadata.version("llama_cpp_python")
    tool = reference_tool(cache_dir(args.cache), version)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeft-families-") as tmp:
        for name in chosen:
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(compare_family(name, families[name], tool, Path(tmp)))
    result = {"llama_cpp_python": version, "transformers": metadata.version("transformers"), "families": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    print(table([line for row in rows for line in summarize(row)],
                ["family", "type", "tensors identical", "tensors only ours / -only ref", "type/shape diffs", "keys only ours",
                 "keys only ref / differing"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
