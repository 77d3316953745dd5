"""Backends by name. Each backend is a package under `edgeft/backends/` whose `__init__` registers
a `BackendInfo` (light: no torch, no runtime), found by scanning this folder, so adding a backend
edits nothing outside its own package. The class doing the work is imported only when used, so
`edgeft --help`, `targets` and profile validation never import torch or a runtime."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from edgeft.backends.options import NoOptions

if TYPE_CHECKING:
    from edgeft.backends.base import Backend
    from edgeft.errors import AdaptersUnsupported


@dataclass(frozen=True)
class BackendInfo:
    """Everything about a backend that the rest of edgeft may know without importing it."""

    name: str
    module: str  # "package.module:ClassName", imported on first use
    summary: str
    quant_levels: tuple[str, ...]
    # Levels with no quantization loss: their export must match the source within `tolerances`.
    unquantized: tuple[str, ...]
    # `--quant auto` candidates; the sweep orders them by the file each produces.
    auto_levels: tuple[str, ...]
    # quant level -> the unquantized level it is made from and measured against (its reference).
    reference_level: Callable[[str], str]
    # Export check: max relative logit error allowed for each unquantized level.
    tolerances: Mapping[str, float] = field(default_factory=dict)
    # Size model: bits per weight of each level, for estimates printed before any file exists.
    bits_per_weight: Mapping[str, float] = field(default_factory=dict)
    # Distribution names whose versions go in the manifest.
    tracked_packages: tuple[str, ...] = ()
    # HF architecture class names this backend can export, or None: whatever transformers loads.
    architectures: Callable[[], tuple[str, ...]] | None = None
    # The `[<name>]` table of a profile: a frozen dataclass with `parse` and `to_toml` (edgeft.backends.options).
    options: type = NoOptions
    # (the profile's options, the level) -> whether `compile` weighs its rounding by an importance file
    # (`edgeft.importance`), so a build measures one from its training text first.
    uses_importance: Callable[[Any, str], bool] = lambda options, quant: False
    # (the options, the level) -> whether `compile` also rounds under the inputs' full second moments
    # (GPTQ), so the importance pass writes them beside the importance file.
    uses_moments: Callable[[Any, str], bool] = lambda options, quant: False
    # (the options, the level, the importance folder) -> one line for the manifest on what the compile
    # did beyond weighing its rounding (read from the record it left there), or None.
    rounding_note: Callable[[Any, str, Path], str | None] = lambda options, quant, folder: None
    # True for a backend whose runner implements `Sampler`: teacher synthesis generates through it.
    teacher: bool = False
    # The quant level of a file or folder this backend made (read from it), or None when it is not one.
    identify: Callable[[Path], str | None] = lambda path: None
    # Refuses, as an ArtifactError with its one-line reason, a file this backend could not load (missing,
    # truncated, foreign), cheaply and in the CLI process: before an A/B gate's child starts timing.
    check_file: Callable[[Path], None] = lambda path: None
    # Task adapters: the file suffix of one adapter in this backend's own format (".gguf": llama.cpp's
    # LoRA adapter), or why this backend has none (a sentence for the one-line refusal).
    adapter_suffix: str | None = None
    no_adapters_because: str = "it has no run-time adapter format"
    # Prefix-tuned tasks (`--method prefix`): the suffix of the learned prefix as this backend's runner
    # seeds it into the KV cache, or why it cannot.
    prefix_suffix: str | None = None
    no_prefix_because: str = "its runtime takes no initial KV cache"

    def accepts(self, architecture: str) -> bool:
        return self.architectures is None or architecture in self.architectures()

    def estimated_bytes(self, parameters: int, quant: str) -> int | None:
        bits = self.bits_per_weight.get(quant)
        return None if bits is None else int(parameters * bits / 8)


_REGISTRY: dict[str, BackendInfo] = {}
_SCANNED = False


def register(info: BackendInfo) -> None:
    """Add a backend; a second backend under the same name is an error, never a silent overwrite."""
    if info.name in _REGISTRY and _REGISTRY[info.name].module != info.module:
        raise ValueError(
            f"backend {info.name!r} is already registered by {_REGISTRY[info.name].module}; "
            f"pick another name for {info.module}"
        )
    _REGISTRY[info.name] = info


def _scan() -> Mapping[str, BackendInfo]:
    """Import every backend package once; each registers itself."""
    global _SCANNED
    if not _SCANNED:
        import edgeft.backends as pkg

        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.ispkg:
                importlib.import_module(f"{pkg.__name__}.{mod.name}")
        _SCANNED = True
    return MappingProxyType(_REGISTRY)


def backend_names() -> list[str]:
    return sorted(_scan())


def info(name: str) -> BackendInfo:
    return _scan()[name]


def all_info() -> list[BackendInfo]:
    return [info(n) for n in backend_names()]


def quant_levels(name: str) -> tuple[str, ...]:
    return info(name).quant_levels


def identify(path: Path) -> tuple[str, str] | None:
    """(backend, level) of an artifact on disk, asking each backend; None when none recognises it."""
    for entry in all_info():
        level = entry.identify(path)
        if level is not None:
            return entry.name, level
    return None


def teacher_backend() -> BackendInfo:
    """The backend teacher synthesis generates with (the first that declares a sampler)."""
    for entry in all_info():
        if entry.teacher:
            return entry
    raise LookupError("no registered backend can generate teacher answers")


def tracked_packages() -> tuple[str, ...]:
    return tuple(p for entry in all_info() for p in entry.tracked_packages)


def estimated_bytes(parameters: int, quant: str) -> int:
    """A size estimate at `quant` from the first backend with a size model for that level (16 bits
    per weight when none has one), printed before any file exists."""
    for entry in all_info():
        size = entry.estimated_bytes(parameters, quant)
        if size is not None:
            return size
    return parameters * 2


def get_backend(name: str) -> "Backend":
    module_name, _, class_name = info(name).module.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()


def parse_options(name: str, raw: Mapping[str, Any], problems: list[tuple[str, str]]) -> Any:
    return info(name).options.parse(raw, problems, table=name)


def no_adapters(name: str, *, file: str | Path | None = None, place: str | None = None) -> "AdaptersUnsupported":
    """The one-line refusal of task adapters by backend `name`, which has no adapter format."""
    from edgeft.errors import AdaptersUnsupported

    return AdaptersUnsupported(f"the {name} backend cannot ship task adapters: {info(name).no_adapters_because}",
                               file=file, place=place)


def adapter_suffix(name: str, *, method: str = "lora", file: str | Path | None = None, place: str | None = None) -> str:
    """The file suffix of backend `name`'s task adapters trained by `method` ("lora" or "prefix");
    refused in one line when it has none."""
    spec = info(name)
    if method == "prefix":
        if spec.prefix_suffix is None:
            from edgeft.errors import AdaptersUnsupported

            raise AdaptersUnsupported(f"the {name} backend cannot ship prefix-tuned tasks: {spec.no_prefix_because}",
                                      file=file, place=place)
        return spec.prefix_suffix
    if spec.adapter_suffix is None:
        raise no_adapters(name, file=file, place=place)
    return spec.adapter_suffix
