"""The interface every backend implements, and the artifact it hands to the next stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from edgeft.config import Target


@dataclass(frozen=True)
class Artifact:
    """What a stage produced: the file (or folder) an app ships, what kind it is, and every file in the package."""

    path: Path
    kind: str  # "gguf", "hf", "onnx", ...
    files: tuple[Path, ...] = field(default_factory=tuple)

    def package_files(self) -> tuple[Path, ...]:
        if self.files:
            return self.files
        if self.path.is_dir():
            return tuple(sorted(p for p in self.path.rglob("*") if p.is_file()))
        return (self.path,)

    def package_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.package_files())


@dataclass(frozen=True)
class Generation:
    """Tokens produced after a prompt, and when: `token_times[i]` is seconds since the prompt was submitted."""

    prompt_tokens: int
    tokens: list[int]
    token_times: list[float]


class Runner(Protocol):
    def logits(self, token_ids: list[int]) -> "np.ndarray":
        """Logits for every position, shape [len, vocab], for perplexity and parity checks."""

    def generate(self, token_ids: list[int], new_tokens: int) -> Generation:
        """Greedy generation of exactly `new_tokens` tokens (no early stop), timed per token."""

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        ...

    def detokenize(self, token_ids: list[int]) -> str:
        ...

    def library_versions(self) -> dict[str, str]:
        ...

    def fingerprint(self) -> dict[str, object]:
        """What identifies the runtime build (versions, instruction sets, providers), so a baseline
        measured on another build can be recognised."""

    def close(self) -> None:
        ...


class Backend(Protocol):
    name: str
    quant_levels: tuple[str, ...]

    def check(self) -> None:
        """Raise BackendUnavailable(reason) if this backend cannot run on this machine."""

    def compile(self, model_dir: Path, target: "Target", out_dir: Path) -> Artifact:
        ...

    def load(self, artifact: Artifact, target: "Target") -> Runner:
        ...
