"""The interface every backend implements, and the artifact it hands to the next stage.

Every method a stage calls is declared here: no stage probes a backend or runner with hasattr."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:
    import numpy as np

    from edgeft.config import Target


@dataclass(frozen=True)
class Artifact:
    """What a stage produced: the file (or folder) an app ships, the backend and level that made it,
    and every file in the package."""

    path: Path
    backend: str
    quant: str
    files: tuple[Path, ...] = field(default_factory=tuple)

    def package_files(self) -> tuple[Path, ...]:
        if self.files:
            return self.files
        if self.path.is_dir():
            return tuple(sorted(p for p in self.path.rglob("*") if p.is_file()))
        return (self.path,)

    def package_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.package_files())

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "backend": self.backend, "quant": self.quant}

    @classmethod
    def from_json(cls, data: dict) -> "Artifact":
        return cls(path=Path(data["path"]), backend=data["backend"], quant=data["quant"],
                   files=tuple(Path(p) for p in data.get("files", ())))


@dataclass(frozen=True)
class ExportMetadata:
    """What an artifact says about its tokenizer, compared field by field with the source model's.
    None means the artifact does not record it, and the export check fails on it."""

    eos_token_id: int | None
    chat_template: str | None
    vocab_size: int | None


@dataclass(frozen=True)
class Generation:
    """Tokens produced after a prompt, and when: `token_times[i]` is seconds since the prompt was submitted."""

    prompt_tokens: int
    tokens: list[int]
    token_times: list[float]


def check_length(n: int, context: int) -> None:
    """A runner's guard on the tokens it is given: at least one, and no more than its context."""
    if n > context:
        raise ValueError(f"{n} tokens exceed the context of {context}")
    if n < 1:
        raise ValueError("no tokens given")


class Runner(Protocol):
    def logits(self, token_ids: list[int]) -> "np.ndarray":
        """Logits for every position, shape [len, vocab], for perplexity and parity checks."""

    def generate(self, token_ids: list[int], new_tokens: int) -> Generation:
        """Greedy generation of exactly `new_tokens` tokens (no early stop), timed per token."""

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        ...

    def detokenize(self, token_ids: list[int]) -> str:
        ...

    def metadata(self) -> ExportMetadata:
        ...

    def library_versions(self) -> dict[str, str]:
        ...

    def fingerprint(self) -> dict[str, object]:
        """What identifies the runtime build (versions, instruction sets, providers), so a baseline
        measured on another build can be recognised."""

    def reset_perf(self) -> None:
        """Start the runtime's own timing counters afresh before a generate (a no-op without them)."""

    def perf_counters(self) -> dict[str, float] | None:
        """The runtime's own timing of the last generate, to cross-check ours; None without one."""

    def close(self) -> None:
        ...


class AdapterRunner(Runner, Protocol):
    """The runner of a backend with task adapters (`BackendInfo.adapter_suffix`)."""

    def use_adapter(self, path: Path | None, scale: float = 1.0) -> None:
        """Make the adapter file at `path` the active one (None: the base alone), without a reload."""


@dataclass(frozen=True)
class Sampling:
    """How a teacher samples an answer (temperature 0: greedy)."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    seed: int


class Sampler(Protocol):
    """A runner that can sample, for teacher synthesis (`BackendInfo.teacher`)."""

    def sample(self, token_ids: list[int], max_new_tokens: int, sampling: Sampling, stop: set[int]) -> list[int]:
        """New tokens after `token_ids`, up to the first stop token (excluded) or `max_new_tokens`."""

    def eos_token_id(self) -> int:
        ...

    def close(self) -> None:
        ...


class Backend(Protocol):
    name: str

    def check(self) -> None:
        """Raise BackendUnavailable(reason) if this backend cannot run on this machine."""

    def details(self) -> dict[str, object]:
        """For `edgeft doctor`: runtime versions, devices, providers, build flags."""

    def reference(self, model_dir: Path, target: "Target", out_dir: Path, *, name: str) -> Artifact:
        """The unquantized export at `info.reference_level(target.quant)`: what quantized levels are
        made from and measured against. The pipeline makes it once per source and reuses it."""

    def compile(self, model_dir: Path, target: "Target", out_dir: Path, *, reference: Artifact, name: str,
                importance: Path | None = None) -> Artifact:
        """`target.quant` into `out_dir` (a copy of `reference` when the level is unquantized). `importance`,
        given only where `BackendInfo.uses_importance` says so, is `edgeft.importance`'s file for `model_dir`."""

    def load(self, artifact: Artifact, target: "Target") -> Runner:
        ...

    def adapter_base(self, base: Artifact, reference: Artifact, model_dir: Path, adapter_dirs: "Sequence[Path]",
                     target: "Target", *, importance: Path | None = None) -> tuple[Artifact, Artifact]:
        """The compiled base and its reference, made ready to take the peft LoRA adapters in `adapter_dirs`
        at run time (trained on the HF folder `model_dir`): unchanged where any adapter of that base loads
        (GGUF), exported again where the graph must carry the adapters' inputs (ONNX). `importance` is the
        file `compile` weighed the base's rounding by, if any, so that an export again rounds it the same."""

    def export_adapter(self, adapter_dir: Path, base_dir: Path, out_path: Path, *, base: Artifact) -> Path:
        """A peft LoRA adapter trained on the HF folder `base_dir`, written (atomically) as one file in
        this backend's adapter format (`BackendInfo.adapter_suffix`), which its runner switches at run
        time, recording the shipped `base` it belongs to; `AdaptersUnsupported` for a backend without one."""

    def check_adapter(self, adapter: Path, base: Artifact) -> None:
        """Refuse, in one line, an adapter file exported for another base than `base`."""

    def adapter_positions(self, adapter: Path) -> int:
        """The context positions an adapter file takes before every sequence: a prefix's length, 0 for LoRA."""


class TeacherBackend(Backend, Protocol):
    def teacher(self, model_dir: Path | None, model_file: Path | None, cache_dir: Path, *, name: str, context: int,
                threads: int, seed: int) -> Sampler:
        """A sampler over the teacher: `model_file` when the source already is this backend's format,
        else `model_dir` exported once into `cache_dir`."""
