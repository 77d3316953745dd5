"""Runners for a TensorRT-ready folder: the graph's own step (tokens + explicit KV cache in,
logits + the grown cache out) driven by one greedy loop, on either runtime.

`OrtRunner` runs the graph in onnxruntime on the CPU: the host half's check that the export
computes what transformers computes, and that ModelOpt's levels stay close to the fp32 graph.
`EngineRunner` runs the engine TensorRT built from it on the GPU (`engine.py`)."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeft.backends.base import ExportMetadata, Generation, check_length
from edgeft.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np

TOKENIZER = "tokenizer.json"
CHAT_TEMPLATE = "chat_template.jinja"


def read_shapes(folder: Path) -> dict[str, Any]:
    from edgeft.backends.tensorrt.export import CONFIG_FILE

    path = folder / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{CONFIG_FILE} is missing; not a folder written by the tensorrt backend", file=folder) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"not valid JSON ({exc})", file=path) from None


class ExplicitKVBase(ABC):
    """Tokenizer, metadata and the greedy loop; a subclass supplies `_step` and `_empty_past`."""

    def __init__(self, folder: Path, context: int):
        from tokenizers import Tokenizer

        self.folder = folder.parent if folder.is_file() else folder
        self.shapes = read_shapes(self.folder)
        self.context = context
        self.layers = int(self.shapes["layers"])
        try:
            self._tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER))
        except Exception as exc:
            raise ArtifactError(f"cannot read the tokenizer ({exc})", file=self.folder / TOKENIZER) from None

    # -- subclass -----------------------------------------------------------------------------
    @abstractmethod
    def _step(self, ids: list[int], start: int, past: list) -> tuple["np.ndarray", list]:
        """Logits [len(ids), vocab] (float32, numpy) and the present cache, for `ids` at positions start.."""

    @abstractmethod
    def _empty_past(self) -> list:
        """The cache before the first token, in the runtime's own tensors."""

    # -- tokens -------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def detokenize(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=False)

    def metadata(self) -> ExportMetadata:
        template = None
        if (self.folder / CHAT_TEMPLATE).is_file():
            template = (self.folder / CHAT_TEMPLATE).read_text(encoding="utf-8")
        elif (self.folder / "tokenizer_config.json").is_file():
            template = json.loads((self.folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
        eos = self.shapes.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return ExportMetadata(eos_token_id=int(eos) if eos is not None else None, chat_template=template,
                              vocab_size=int(self.shapes["vocab_size"]))

    # -- compute ------------------------------------------------------------------------------
    def logits(self, token_ids: list[int]) -> "np.ndarray":
        check_length(len(token_ids), self.context)
        logits, _ = self._step(list(token_ids), 0, self._empty_past())
        return logits

    def generate(self, token_ids: list[int], new_tokens: int) -> Generation:
        """Greedy, exactly `new_tokens` tokens: one prefill step, then one token per step on the cache."""
        check_length(len(token_ids) + new_tokens, self.context)
        tokens: list[int] = []
        times: list[float] = []
        start = time.perf_counter()
        ids, pos, past = list(token_ids), 0, self._empty_past()
        while len(tokens) < new_tokens:
            logits, past = self._step(ids, pos, past)
            token = int(logits[-1].argmax())
            times.append(time.perf_counter() - start)
            tokens.append(token)
            pos += len(ids)
            ids = [token]
        return Generation(prompt_tokens=len(token_ids), tokens=tokens, token_times=times)

    def reset_perf(self) -> None:
        """No runtime counters of its own beyond `perf_counters`."""

    def perf_counters(self) -> dict[str, float] | None:
        return None

    def close(self) -> None:
        self._tokenizer = None


class OrtRunner(ExplicitKVBase):
    """The TensorRT-ready graph in onnxruntime's CPU provider (the host half's check)."""

    def __init__(self, folder: Path, threads: int, context: int):
        import onnxruntime as ort

        from edgeft.backends.tensorrt.export import MODEL_FILE

        super().__init__(folder, context)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"onnxruntime cannot load it ({' '.join(str(exc).split())[:300]})", file=self.folder) from None
        self._inputs = {i.name: i.type for i in self.session.get_inputs()}
        self._past_names = [n for n in self.shapes["inputs"] if n.startswith("past_key_values.")]

    def _empty_past(self) -> list:
        import numpy as np

        dtype = np.float16 if self._inputs[self._past_names[0]] == "tensor(float16)" else np.float32
        shape = (1, int(self.shapes["kv_heads"]), 0, int(self.shapes["head_dim"]))
        return [np.zeros(shape, dtype=dtype) for _ in self._past_names]

    def _step(self, ids: list[int], start: int, past: list) -> tuple["np.ndarray", list]:
        import numpy as np

        feed = {"input_ids": np.asarray([ids], dtype=np.int64),
                "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None, :],
                **dict(zip(self._past_names, past))}
        outputs = self.session.run(None, feed)
        return np.asarray(outputs[0][0], dtype=np.float32), outputs[1:]

    def library_versions(self) -> dict[str, str]:
        from edgeft.bench.machine import package_versions

        return package_versions(("onnxruntime", "onnx"))

    def fingerprint(self) -> dict[str, object]:
        return {**self.library_versions(), "providers": ["CPUExecutionProvider"]}

    def close(self) -> None:
        self.session = None
        super().close()
