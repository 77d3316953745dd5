"""The GGUF backend's work: our HF -> GGUF converter, llama.cpp's quantizer, llama-cpp-python as runtime."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from edgeft.atomic_io import atomic_path
from edgeft.backends.base import Artifact, ExportMetadata, Generation, Sampling
from edgeft.backends.gguf import FTYPES, GGUF_MAGIC, TENSOR_TYPES
from edgeft.errors import ArtifactError, BackendUnavailable

if TYPE_CHECKING:
    import numpy as np

    from edgeft.config import Target
    from edgeft.models import ModelSource


def quantize(src: Path, dst: Path, quant: str, threads: int = 0, *, embedding_type: str = "",
             importance: "Mapping[str, np.ndarray] | None" = None, moments: Path | None = None,
             model_dir: Path | None = None) -> Path:
    """Quantize a GGUF file with llama.cpp's own quantizer; metadata is carried over unchanged. With
    `importance` (by GGUF tensor name), the tensors it names are then rounded again weighing their
    input columns by it (`imatrix.py`); with `moments` too (the second moments file of the HF model at
    `model_dir`), the tensors GPTQ writes are rounded once more by it (`gptq.py`).

    The quantizer runs in a child process (`edgeft.child`): its kernels are native code."""
    from edgeft.backends.gguf.gptq import rewrite
    from edgeft.backends.gguf.imatrix import requantize
    from edgeft.child import call
    from edgeft.progress import status

    with atomic_path(dst) as tmp:
        rc, said = call(_quantize_native, src, tmp, quant, threads, embedding_type=embedding_type,
                        what=f"llama.cpp quantizing {src.name} to {quant}")
        if rc != 0:
            raise ArtifactError(f"llama.cpp could not quantize to {quant} (return code {rc}"
                                + (f": {said}" if said else "") + ")", file=src)
        if importance:
            call(requantize, tmp, src, dict(importance), threads, what=f"ggml weighing {src.name}'s {quant} rounding")
        if moments is not None:
            from edgeft.atomic_io import write_json
            from edgeft.backends.gguf.gptq import done_file

            status(f"GPTQ: rounding {quant}'s q5_0, q5_1 and q4_K tensors with error feedback ...")
            done = call(rewrite, tmp, src, moments, model_dir, dict(importance or {}), threads,
                        what=f"GPTQ rounding {src.name} to {quant}")
            write_json(done_file(moments.parent, quant), {**done, "file": dst.name})
    return dst


def _quantize_native(src: Path, dst: Path, quant: str, threads: int, *, allow_requantize: bool = False,
                     embedding_type: str = "") -> tuple[int, str]:
    """llama.cpp's quantizer in this process (a child of ours): its return code (0 on success) and,
    on failure, the reason it logged (its log is muted, so a failure would otherwise say nothing)."""
    import llama_cpp

    from edgeft.progress import muted_native_stderr, quiet_libraries

    quiet_libraries()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = threads
    params.allow_requantize = allow_requantize
    if embedding_type:
        params.token_embedding_type = TENSOR_TYPES[embedding_type]
    with muted_native_stderr() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    return rc, (log.reason(src, dst) if rc != 0 else "")


def check_embedding_type(path: Path, embedding_type: str, profile: str | None) -> None:
    """K-quant blocks hold 256 weights: a K type for the token table needs rows that many wide, or
    llama.cpp's quantizer fails with no reason given. Refuse it up front, naming the profile key."""
    if not embedding_type.endswith("_k"):
        return
    from edgeft.backends.gguf.header import read_header
    from edgeft.errors import ConfigError

    width = next((t.shape[0] for t in read_header(path).tensors if t.name == "token_embd.weight"), None)
    if width is not None and width % 256:
        raise ConfigError([("gguf.embedding_type", f"{embedding_type} needs rows of a multiple of 256 weights; this model's "
                                                  f"token table is {width} wide (q4_0, q5_0 or q8_0 fit any width)")],
                          file=profile or "<profile>")


def check_gguf_file(path: Path) -> None:
    """Refuse a missing, truncated or foreign file with a one-line reason before llama.cpp sees it."""
    if path.is_dir():
        raise ArtifactError("a folder, not a GGUF file (nor a build folder with manifest.json)", file=path)
    if not path.is_file():
        raise ArtifactError("no such file", file=path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != GGUF_MAGIC:
        raise ArtifactError("not a GGUF file (bad magic number)", file=path)
    from edgeft.backends.gguf.header import read_header

    try:
        last = read_header(path).data_end()
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"corrupt GGUF file ({exc})", file=path) from None
    if last > path.stat().st_size:
        raise ArtifactError(f"truncated GGUF file: tensor data ends at byte {last}, file has {path.stat().st_size}", file=path)


class LlamaCppRunner:
    """Runs a GGUF file through llama-cpp-python; logits and timed greedy generation."""

    def __init__(self, path: Path, threads: int, context: int, seed: int = 0):
        self.path = path
        self.seed = seed
        self.threads = threads
        self.context = context
        self._adapter: tuple[Path, float] | None = None  # the active LoRA adapter and its scale
        self._adapters: dict[tuple[int, Path], object] = {}  # (context, file) -> llama.cpp's loaded adapter
        self._gen = self._open(logits_all=False)
        self._scorer = None  # a second context with logits for every position, opened on first use

    def _open(self, *, logits_all: bool):
        import logging

        from llama_cpp import Llama

        from edgeft.progress import muted_native_stderr

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its per-load chatter
        # muted: llama.cpp prints some load notes (a sliding-window cache's size) whatever `verbose` says;
        # a load that fails raises, and its reason (what llama.cpp logged) is the one line below
        log = muted_native_stderr()
        try:
            with log:
                llm = Llama(model_path=str(self.path), n_ctx=self.context, n_batch=min(512, self.context),
                            n_threads=self.threads, n_threads_batch=self.threads, logits_all=logits_all,
                            verbose=False, seed=self.seed)
        except (ValueError, RuntimeError) as exc:
            said = log.reason(self.path)
            raise ArtifactError(f"llama.cpp cannot load it ({exc}" + (f"; {said}" if said else "") + ")",
                                file=self.path) from None
        self._apply_adapter(llm)
        return llm

    def use_adapter(self, path: Path | None, scale: float = 1.0) -> None:
        """Make the GGUF LoRA adapter at `path` the active one (None: the base alone), in every context
        this runner has open or opens later. llama.cpp applies it at run time; the base's weights stay
        as they are, so switching is a pointer swap, not a reload (each file is loaded once)."""
        self._adapter = (Path(path), float(scale)) if path is not None else None
        for llm in (self._gen, self._scorer):
            if llm is not None:
                self._apply_adapter(llm)

    def _apply_adapter(self, llm) -> None:
        import llama_cpp

        from edgeft.progress import muted_native_stderr

        if self._adapter is None:
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
            return
        path, scale = self._adapter
        key = (id(llm), path)
        if key not in self._adapters:
            with muted_native_stderr():
                handle = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode("utf-8"))
            if not handle:  # freed with its model when the runner closes
                raise ArtifactError("llama.cpp cannot load this LoRA adapter (not a GGUF adapter, or one for another "
                                    "base)", file=path)
            self._adapters[key] = handle
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[key])
        scales = (ctypes.c_float * 1)(scale)
        if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
            raise ArtifactError("llama.cpp refused to apply this LoRA adapter", file=path)

    @property
    def n_vocab(self) -> int:
        return self._gen.n_vocab()

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        return self._gen.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, token_ids: list[int]) -> str:
        return self._gen.detokenize(token_ids, special=True).decode("utf-8", errors="replace")

    def metadata(self) -> ExportMetadata:
        meta = dict(self._gen.metadata)
        eos = meta.get("tokenizer.ggml.eos_token_id")
        return ExportMetadata(eos_token_id=int(eos) if eos is not None else None,
                              chat_template=meta.get("tokenizer.chat_template"), vocab_size=self.n_vocab)

    def eos_token_id(self) -> int:
        return int(self._gen.token_eos())

    def sample(self, token_ids: list[int], max_new_tokens: int, sampling: Sampling, stop: set[int]) -> list[int]:
        """llama.cpp's sampler (top-k, then top-p, then min-p, then temperature), seeded per call."""
        llm = self._gen
        llm.reset()
        llm.set_seed(sampling.seed)
        new: list[int] = []
        for tok in llm.generate(list(token_ids), temp=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                                min_p=sampling.min_p, repeat_penalty=1.0, reset=False):
            if int(tok) in stop or len(new) >= max_new_tokens:
                break
            new.append(int(tok))
        return new

    def logits(self, token_ids: list[int]) -> "np.ndarray":
        import numpy as np

        if len(token_ids) > self.context:
            raise ValueError(f"{len(token_ids)} tokens exceed the context of {self.context}")
        if self._scorer is None:
            self._scorer = self._open(logits_all=True)
        self._scorer.reset()
        self._scorer.eval(token_ids)
        return np.array(self._scorer.scores[: len(token_ids)], dtype=np.float32)

    def generate(self, token_ids: list[int], new_tokens: int) -> Generation:
        llm = self._gen
        llm.reset()  # no prompt reuse between runs: every run pays for its prefill
        tokens: list[int] = []
        times: list[float] = []
        start = time.perf_counter()
        for tok in llm.generate(token_ids, temp=0.0, repeat_penalty=1.0, reset=False):
            times.append(time.perf_counter() - start)
            tokens.append(int(tok))
            if len(tokens) >= new_tokens:
                break
        return Generation(prompt_tokens=len(token_ids), tokens=tokens, token_times=times)

    def perf_counters(self) -> dict[str, float] | None:
        """llama.cpp's own timing of the last generate, to cross-check ours."""
        import llama_cpp

        data = llama_cpp.llama_perf_context(self._gen._ctx.ctx)
        return {"prompt_eval_ms": data.t_p_eval_ms, "n_prompt_eval": data.n_p_eval, "eval_ms": data.t_eval_ms, "n_eval": data.n_eval}

    def reset_perf(self) -> None:
        import llama_cpp

        llama_cpp.llama_perf_context_reset(self._gen._ctx.ctx)

    def library_versions(self) -> dict[str, str]:
        import llama_cpp

        return {"llama-cpp-python": llama_cpp.__version__}

    def fingerprint(self) -> dict[str, object]:
        """The runtime build as bench.json records it: llama.cpp's instruction sets and our build flags."""
        from edgeft.backends.gguf.smoke import fingerprint

        return fingerprint()

    def close(self) -> None:
        for llm in (self._gen, self._scorer):
            if llm is not None:
                llm.close()
        self._scorer = None
        self._adapters.clear()


class GGUFBackend:
    name = "gguf"

    def check(self) -> None:
        try:
            import gguf  # noqa: F401
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable(f"{exc.name} is not installed (run `make setup`)") from None

    def details(self) -> dict[str, object]:
        """For `edgeft doctor`: the build's instruction sets as llama.cpp reports them, the flags we
        built it with, and the smoke probe (a 64-token prompt at three levels, each in a child)."""
        from edgeft.backends.gguf.smoke import advice, fingerprint, probe
        from edgeft.child import call

        info = call(fingerprint, what="llama.cpp reporting its build")
        smoke = probe()
        details: dict[str, object] = {
            "versions": {"llama-cpp-python": info["llama-cpp-python"]},
            "system_info": info["system_info"],
            "build_flags": ", ".join(f.removeprefix("GGML_") for f in info["build_flags"] or []) or "unknown (not built by make setup)",
            "smoke_probe": ("PASS" if smoke["ok"] else "FAIL") + f" ({smoke['prompt_tokens']}-token prompt): " + ", ".join(
                f"{lv['quant']} ok" if lv["ok"] else f"{lv['quant']} {lv['error']}" for lv in smoke["levels"]),
            "ok": smoke["ok"],
            "smoke": smoke,
        }
        if not smoke["ok"]:
            details["advice"] = advice(smoke)
        return details

    def reference(self, model_dir: Path, target: "Target", out_dir: Path, *, name: str) -> Artifact:
        """`<out_dir>/model-<level>.gguf`, straight from our converter (f16 for every quantized level)."""
        from edgeft.backends.gguf.convert import convert

        self.check()
        path = out_dir / f"model-{target.quant}.gguf"
        convert(model_dir, path, target.quant, name=name)
        return Artifact(path=path, backend=self.name, quant=target.quant, files=(path,))

    def compile(self, model_dir: Path, target: "Target", out_dir: Path, *, reference: Artifact, name: str,
                importance: Path | None = None) -> Artifact:
        """`<out_dir>/model-<quant>.gguf`: the reference itself (copied) at its own level, else quantized from it,
        its rounding weighed by `importance` when given (`edgeft.importance`'s file of the model at `model_dir`).
        The model name was written into the reference by the converter."""
        import shutil

        self.check()
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / f"model-{target.quant}.gguf"
        if target.quant == reference.quant:
            with atomic_path(final) as tmp:
                shutil.copyfile(reference.path, tmp)
        else:
            check_embedding_type(reference.path, target.options.embedding_type, target.source)
            weights = moments = None
            if importance is not None:
                from edgeft import importance as imp
                from edgeft.backends.gguf.imatrix import gguf_importance

                weights = gguf_importance(model_dir, imp.load(importance))
                if target.options.gptq:
                    moments = importance.with_name(imp.MOMENTS)
                    if not moments.is_file():
                        raise ArtifactError("GPTQ ([gguf] gptq) needs the second moments beside the importance file, and "
                                            "they are missing: build again, and the importance stage measures them",
                                            file=moments)
            quantize(reference.path, final, target.quant, threads=target.resolved_threads(),
                     embedding_type=target.options.embedding_type, importance=weights, moments=moments,
                     model_dir=model_dir)
        return Artifact(path=final, backend=self.name, quant=target.quant, files=(final,))

    def load(self, artifact: Artifact, target: "Target") -> LlamaCppRunner:
        self.check()
        check_gguf_file(artifact.path)
        return LlamaCppRunner(artifact.path, threads=target.resolved_threads(), context=target.bench.context)

    def adapter_base(self, base: Artifact, reference: Artifact, model_dir: Path, adapter_dirs: "Sequence[Path]",
                     target: "Target", *, importance: Path | None = None) -> tuple[Artifact, Artifact]:
        """llama.cpp applies a LoRA file to any base with the same tensors: nothing to change."""
        return base, reference

    def export_adapter(self, adapter_dir: Path, base_dir: Path, out_path: Path, *, base: Artifact) -> Path:
        from edgeft.backends.gguf.lora import export_lora
        from edgeft.manifest import sha256

        return export_lora(adapter_dir, base_dir, out_path, base_sha256=sha256(base.path))

    def check_adapter(self, adapter: Path, base: Artifact) -> None:
        from edgeft.backends.gguf.lora import check_base

        check_base(adapter, base.path)

    def adapter_positions(self, adapter: Path) -> int:
        return 0  # llama.cpp's adapters are LoRA only: nothing in the context

    def teacher(self, source: "ModelSource", cache_dir: Path, *, context: int, threads: int, seed: int) -> LlamaCppRunner:
        """A GGUF teacher is run as it is; an HF one is converted to f16 once (cached by its hash)."""
        from edgeft.data.synthesize import teacher_hash
        from edgeft.progress import status

        self.check()
        path = source.path
        if source.kind != "gguf":
            from edgeft.backends.gguf.convert import convert

            path = cache_dir / "teachers" / f"{teacher_hash(source)[:32]}-f16.gguf"
            if not path.is_file():
                status(f"converting teacher {source.label} to f16 GGUF for generation ...")
                convert(source.path, path, "f16", name=source.path.name)
        return LlamaCppRunner(path, threads=threads, context=context, seed=seed)
