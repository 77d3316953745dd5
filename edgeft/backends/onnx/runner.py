"""Runs an exported ONNX folder with plain onnxruntime, carrying the KV cache between steps.

Plain onnxruntime rather than onnxruntime-genai's generator: it gives the logits of every
position (for perplexity and parity) and exact greedy decoding with no early stop at EOS (what
the bench must time, as the GGUF runner does). The KV cache stays in ONNX Runtime's own buffers
between steps through IO binding, so a decode step copies no cache through numpy; decode speed
is on par with genai's generator on the same folder (benchmarks/onnx_vs_gguf.py measures both).
Tokenization uses the folder's tokenizer.json with the `tokenizers` library, the same
file onnxruntime-genai reads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeft.backends.base import ExportMetadata, Generation, check_length
from edgeft.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np

GENAI_CONFIG = "genai_config.json"
TOKENIZER = "tokenizer.json"
CHAT_TEMPLATE = "chat_template.jinja"


def resolve_folder(path: Path) -> Path:
    """The artifact folder: `path` itself, or the folder of a .onnx file given directly."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError("no such file or folder", file=path)
    return path.parent if path.is_file() else path


def read_genai_config(folder: Path) -> dict[str, Any]:
    config_path = folder / GENAI_CONFIG
    if not config_path.is_file():
        raise ArtifactError(f"{GENAI_CONFIG} is missing; not an ONNX folder written by `edgeft` or onnxruntime-genai", file=folder)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = config["model"]["decoder"]
        for key in ("filename", "num_hidden_layers", "num_key_value_heads", "head_size"):
            decoder[key]  # noqa: B018 - presence check
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"not valid JSON ({exc})", file=config_path) from None
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"model.decoder.{exc.args[0] if exc.args else '?'} is missing", file=config_path) from None
    return config


def check_onnx_file(model_path: Path) -> None:
    """Refuse a missing, corrupt or incomplete graph (missing or short external data) in one line."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if not model_path.is_file():
        raise ArtifactError("no such file", file=model_path)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, onnx others
        raise ArtifactError(f"corrupt ONNX file ({type(exc).__name__}: {str(exc) or 'cannot parse'})", file=model_path) from None
    if not model.graph.node:
        raise ArtifactError("corrupt ONNX file (the graph has no nodes)", file=model_path)
    sizes: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        data = model_path.parent / info.location
        if info.location not in sizes:
            if not data.is_file():
                raise ArtifactError(f"external data file {info.location} is missing (tensor {tensor.name})", file=model_path)
            sizes[info.location] = data.stat().st_size
        end = (info.offset or 0) + (info.length or 0)
        if end > sizes[info.location]:
            raise ArtifactError(
                f"external data file {info.location} is truncated: tensor {tensor.name} ends at byte {end}, "
                f"file has {sizes[info.location]}",
                file=model_path,
            )


@dataclass
class _Active:
    """The active task adapter: LoRA values for the graph's inputs (with run options holding ONNX
    Runtime's loaded adapter, or None to feed them by name), or a prefix's initial keys and values."""

    options: Any
    params: dict[str, Any]
    prefix: dict[str, Any] = field(default_factory=dict)
    prefix_len: int = 0
    keep: Any = None  # the ort.LoraAdapter the run options point to


class OnnxRunner:
    """Logits and timed greedy generation for one ONNX folder, on ONNX Runtime's CPU provider."""

    def __init__(self, folder: Path, threads: int, context: int):
        self.folder = resolve_folder(folder)
        self.config = read_genai_config(self.folder)
        decoder = self.config["model"]["decoder"]
        self.model_path = self.folder / decoder["filename"]
        check_onnx_file(self.model_path)
        self.threads = threads
        self.context = min(context, int(self.config["model"].get("context_length") or context))
        self.n_layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_size = int(decoder["head_size"])
        names = decoder.get("inputs", {})
        outs = decoder.get("outputs", {})
        self.past_names = [(names.get("past_key_names", "past_key_values.%d.key") % i,
                            names.get("past_value_names", "past_key_values.%d.value") % i) for i in range(self.n_layers)]
        self.present_names = [(outs.get("present_key_names", "present.%d.key") % i,
                               outs.get("present_value_names", "present.%d.value") % i) for i in range(self.n_layers)]
        self.session = self._open_session()
        self._kv_dtype = self._past_dtype()
        self._tokenizer = self._open_tokenizer()
        # Task adapters (adapters.py): the active one's values for the graph's LoRA inputs, fed by
        # ONNX Runtime's adapter API to `logits` and bound by name in `generate` (IO binding runs
        # ignore active adapters); files are read once and kept, so a switch is a dictionary swap.
        self._adapter: _Active | None = None
        self._adapters: dict[tuple[Path, float], _Active] = {}

    def _open_session(self):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only; the warnings are about fallbacks we measure anyway
        try:
            return ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            reason = " ".join(str(exc).split())[:300]
            raise ArtifactError(f"onnxruntime cannot load it ({reason})", file=self.model_path) from None

    def _past_dtype(self):
        import numpy as np

        types = {i.name: i.type for i in self.session.get_inputs()}
        first = self.past_names[0][0]
        if first not in types:
            raise ArtifactError(f"the graph has no KV-cache input {first!r}", file=self.model_path)
        return {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(types[first], np.float32)

    def _open_tokenizer(self):
        from tokenizers import Tokenizer

        path = self.folder / TOKENIZER
        if not path.is_file():
            raise ArtifactError(f"{TOKENIZER} is missing; an app could not tokenize", file=self.folder)
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ArtifactError(f"cannot read the tokenizer ({exc})", file=path) from None

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        # Special-token text such as <|im_start|> is always matched by tokenizers, as in transformers.
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def detokenize(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=False)

    def metadata(self) -> ExportMetadata:
        """What the export check compares with the source model, from genai_config.json (what
        onnxruntime-genai stops on) and the folder's chat template."""
        eos = self.config["model"].get("eos_token_id")
        if isinstance(eos, list):  # several stop ids: the first is the tokenizer's own
            eos = eos[0] if eos else None
        vocab = self.config["model"].get("vocab_size")
        return ExportMetadata(eos_token_id=int(eos) if eos is not None else None, chat_template=self.chat_template(),
                              vocab_size=int(vocab) if vocab is not None else None)

    def reset_perf(self) -> None:
        """onnxruntime keeps no per-generate counters of its own: ours are the only timing."""

    def perf_counters(self) -> dict[str, float] | None:
        return None

    def chat_template(self) -> str | None:
        path = self.folder / CHAT_TEMPLATE
        if path.is_file():
            return path.read_text(encoding="utf-8")
        tok_config = self.folder / "tokenizer_config.json"
        if tok_config.is_file():
            return json.loads(tok_config.read_text(encoding="utf-8")).get("chat_template")
        return None

    # -- task adapters ------------------------------------------------------------------------
    def use_adapter(self, path: Path | None, scale: float = 1.0) -> None:
        """Make the task adapter at `path` the active one (None: the base alone), without a reload: an
        `.onnx_adapter` (LoRA) or a `.prefix.safetensors` (prefix tuning: the initial KV cache)."""
        if path is None:
            self._adapter = None
            return
        entry = (Path(path).resolve(), float(scale))
        if entry not in self._adapters:
            self._adapters[entry] = self._load_adapter(*entry)
        self._adapter = self._adapters[entry]

    def _load_adapter(self, path: Path, scale: float) -> "_Active":
        import onnxruntime as ort

        from edgeft.backends.onnx import adapters

        if adapters.is_prefix_file(path):
            if scale != 1.0:
                raise ArtifactError("a prefix has no scale (it is keys and values, not a weight update)", file=path)
            shapes = {name: [1, self.kv_heads, None, self.head_size] for pair in self.past_names for name in pair}
            prefix = adapters.read_prefix(path, shapes, self._kv_dtype)
            return _Active(options=None, params={}, prefix=prefix,
                           prefix_len=next(iter(prefix.values())).shape[2] if prefix else 0)
        params = adapters.read(path).get_parameters()
        inputs = {i.name: [d if isinstance(d, int) else str(d) for d in i.shape]
                  for i in self.session.get_overridable_initializers() if adapters.INPUT.match(i.name)}
        if not inputs:
            raise ArtifactError("this graph takes no adapters (exported without LoRA inputs: build it with --task)",
                                file=self.model_path)
        for name, value in params.items():
            adapters.check_shape(name, tuple(value.shape()), inputs, file=path)
        if scale != 1.0:  # B carries the scaling: scale it, A as it is; fed by name, not from the file
            params = {name: ort.OrtValue.ortvalue_from_numpy(value.numpy() * scale) if name.endswith("lora_B.MatMul.weight")
                      else value for name, value in params.items()}
            return _Active(options=None, params=params)
        adapter = ort.LoraAdapter()
        adapter.Load(str(path))
        options = ort.RunOptions()
        options.add_active_adapter(adapter)  # a bare pointer: the adapter must live as long as the options
        return _Active(options=options, params=params, keep=adapter)

    # -- compute ----------------------------------------------------------------------------
    def _empty_past(self) -> dict[str, Any]:
        """The cache a sequence starts from: empty, or the active prefix's keys and values."""
        import numpy as np

        if self._adapter is not None and self._adapter.prefix:
            return dict(self._adapter.prefix)
        empty = np.zeros((1, self.kv_heads, 0, self.head_size), dtype=self._kv_dtype)
        return {name: empty for pair in self.past_names for name in pair}

    def _prefix_len(self) -> int:
        return self._adapter.prefix_len if self._adapter is not None else 0

    def logits(self, token_ids: list[int]) -> "np.ndarray":
        """Logits for every position in one pass from an empty cache (or the active prefix), [len, vocab] float32."""
        import numpy as np

        check_length(len(token_ids) + self._prefix_len(), self.context)
        feed = {
            "input_ids": np.asarray([token_ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(token_ids) + self._prefix_len()), dtype=np.int64),
            **self._empty_past(),
        }
        active = self._adapter or _Active(options=None, params={})
        if active.params and active.options is None:
            import onnxruntime as ort

            values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feed.items()}
            (logits,) = self.session.run_with_ort_values(["logits"], {**values, **active.params})
            logits = logits.numpy()
        else:
            (logits,) = self.session.run(["logits"], feed, active.options)
        return np.asarray(logits[0], dtype=np.float32)

    def generate(self, token_ids: list[int], new_tokens: int) -> Generation:
        """Greedy, exactly `new_tokens` tokens (EOS does not stop it), timed from prompt submission.

        The prompt is one prefill step; every later step feeds one token and the cache the
        previous step returned, bound as ONNX Runtime values so it is never copied to numpy."""
        import numpy as np
        import onnxruntime as ort

        check_length(len(token_ids) + new_tokens + self._prefix_len(), self.context)
        session = self.session
        binding = session.io_binding()
        outputs = ["logits"] + [name for pair in self.present_names for name in pair]
        tokens: list[int] = []
        times: list[float] = []
        start = time.perf_counter()
        ids = np.asarray([token_ids], dtype=np.int64)
        past = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in self._empty_past().items()}
        adapter_params = self._adapter.params if self._adapter is not None else {}
        total = len(token_ids) + self._prefix_len()
        while len(tokens) < new_tokens:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
            for name, value in past.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in adapter_params.items():
                binding.bind_ortvalue_input(name, value)
            for name in outputs:
                binding.bind_output(name, "cpu")
            session.run_with_iobinding(binding)
            values = binding.get_outputs()
            last = values[0].numpy()[0, -1]  # [vocab] of the last position
            token = int(last.argmax())
            times.append(time.perf_counter() - start)
            tokens.append(token)
            past = {p: v for (p, v) in zip((n for pair in self.past_names for n in pair), values[1:])}
            ids = np.asarray([[token]], dtype=np.int64)
            total += 1
        return Generation(prompt_tokens=len(token_ids), tokens=tokens, token_times=times)

    def library_versions(self) -> dict[str, str]:
        # Read from package metadata: importing onnxruntime_genai here would load a second runtime
        # into the process whose peak memory the bench reports.
        from edgeft.bench.machine import package_versions

        return package_versions(("onnxruntime", "onnxruntime-genai", "onnx"))

    def fingerprint(self) -> dict[str, object]:
        """The runtime as bench.json records it: versions and the execution providers the session runs on."""
        return {**self.library_versions(), "providers": list(self.session.get_providers()) if self.session else []}

    def close(self) -> None:
        self._adapter = None
        self._adapters.clear()
        self.session = None
        self._tokenizer = None
