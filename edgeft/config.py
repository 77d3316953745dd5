"""Typed configs and target-profile loading.

Every default lives here, once, as a frozen dataclass field. A profile file is validated
as a whole: every problem is collected and reported together, naming file and key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from edgeft.errors import ConfigError


@dataclass(frozen=True)
class BenchSettings:
    """How a model is timed: prompt of `prompt_tokens`, `new_tokens` generated, `runs` after `warmup`."""

    prompt_tokens: int = 64
    new_tokens: int = 64
    runs: int = 5
    warmup: int = 1
    context: int = 2048
    eval_window: int = 512  # perplexity/KL window in tokens (capped at `context`)
    eval_tokens: int = 4096  # at most this many evaluation tokens are scored


@dataclass(frozen=True)
class Regression:
    """The baseline gate's tolerances in percent: `tolerance_pct` for every gated metric,
    or a per-metric value (None: use `tolerance_pct`)."""

    tolerance_pct: float = 10.0
    ttft_ms_p50: float | None = None
    ms_per_token_p50: float | None = None
    decode_tok_s_p50: float | None = None
    prefill_tok_s_p50: float | None = None
    peak_rss_mb: float | None = None
    package_mb: float | None = None
    model_mb: float | None = None
    ppl: float | None = None
    top1_agree_pct: float | None = None

    def for_metric(self, metric: str) -> float:
        value = getattr(self, metric, None)
        return self.tolerance_pct if value is None else value


# The profile `--target` means when none is given: the shipped `targets/gguf.toml`, one file for a phone.
DEFAULT_TARGET = "gguf"

# `quant = "auto"`: quantize to fit, trying the backend's candidate levels from the smallest file upward.
AUTO_QUANT = "auto"


# Budget keys for which 0 is a meaningful limit (no loss at all), where every other limit must be positive.
QUALITY_ZERO_OK = ("ppl_increase_pct", "ppl_vs_source_pct", "answer_ppl_vs_source_pct")


@dataclass(frozen=True)
class Budget:
    """Limits a build must meet; a key left as None is not checked."""

    ttft_ms_p90: float | None = None
    package_mb: float | None = None
    ms_per_token_p90: float | None = None
    peak_rss_mb: float | None = None
    ppl_increase_pct: float | None = None  # against the artifact's own unquantized export: quantization loss alone
    # Against the source model the user gave (the teacher when distilling): everything the build did to it.
    ppl_vs_source_pct: float | None = None
    # The fixed chat prompts' greedy answers, scored by the source: how much more perplexing it finds the
    # shipped file's answer than its own, % increase, on the worst prompt (`source_model.side_by_side`).
    answer_ppl_vs_source_pct: float | None = None


@dataclass(frozen=True)
class Target:
    """A resolved target profile: backend, quantization level, runtime settings and budget."""

    name: str
    backend: str
    quant: str
    threads: int = 0  # 0: one per CPU core of the machine running the bench
    bench: BenchSettings = field(default_factory=BenchSettings)
    budget: Budget = field(default_factory=Budget)
    # The backend's own `[<backend>]` table, typed by the backend (BackendInfo.options); None: its defaults.
    options: Any = None
    regression: Regression = field(default_factory=Regression)
    source: str | None = None  # the TOML file it came from

    def __post_init__(self) -> None:
        if self.options is None:
            from edgeft.backends.registry import info

            object.__setattr__(self, "options", info(self.backend).options())

    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else max(1, os.cpu_count() or 1)

    def with_overrides(self, **changes: Any) -> "Target":
        """Apply CLI flags over profile keys, validating the result like a file would be."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        data = to_dict(self)
        data.update(changes)
        if "backend" in changes and changes["backend"] != self.backend:
            data.pop(self.backend, None)
        try:
            return _build_target(data, name=self.name, source=self.source or "<flags>")
        except ConfigError as exc:  # the profile was valid: a problem with a changed key is the flag's
            if not all(key in changes for key, _ in exc.problems):
                raise
            raise ConfigError([(f"--{key}", why) for key, why in exc.problems]) from None

    def to_toml(self) -> str:
        """The resolved profile, saved beside the artifacts it produced."""
        lines = [f'backend = "{self.backend}"', f'quant = "{self.quant}"', f"threads = {self.threads}", "", "[bench]"]
        lines += [f"{f.name} = {getattr(self.bench, f.name)}" for f in fields(BenchSettings)]
        lines += ["", "[budget]"]
        lines += [f"{f.name} = {getattr(self.budget, f.name)}" for f in fields(Budget) if getattr(self.budget, f.name) is not None]
        lines += self.options.to_toml(self.backend)
        lines += ["", "[regression]"]
        lines += [f"{f.name} = {getattr(self.regression, f.name)}" for f in fields(Regression) if getattr(self.regression, f.name) is not None]
        return "\n".join(lines) + "\n"


def options_dict(target: Target) -> dict[str, Any]:
    return dataclasses.asdict(target.options)


def to_dict(target: Target) -> dict[str, Any]:
    """The profile as a TOML file would hold it (the backend's table under its name, when it has one)."""
    data = {"backend": target.backend, "quant": target.quant, "threads": target.threads,
            "bench": dataclasses.asdict(target.bench),
            "budget": {k: v for k, v in dataclasses.asdict(target.budget).items() if v is not None},
            "regression": {k: v for k, v in dataclasses.asdict(target.regression).items() if v is not None}}
    options = options_dict(target)
    if options:
        data[target.backend] = options
    return data


def targets_dir() -> Path:
    """Where shipped profiles live: inside the wheel, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "targets", here.parent / "targets"):
        if candidate.is_dir():
            return candidate
    raise ConfigError([("", "no shipped target profiles found; the installation is incomplete")], file=here)


def shipped_targets() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


def load_target(name_or_path: str | Path) -> Target:
    """Resolve `--target`: a shipped profile name or a path to a TOML file."""
    text = str(name_or_path)
    path = Path(text)
    # A bare name is a file here only when it is a file: `--out onnx` leaves a folder that must not hide
    # the shipped profile of that name.
    if not (path.suffix == ".toml" or os.sep in text or path.is_file()):
        path = targets_dir() / f"{text}.toml"
        if not path.exists():
            raise ConfigError(
                [("", f"no target profile named '{text}'; shipped profiles: {', '.join(shipped_targets())}")],
                file=text,
            )
    return _build_target(read_toml(path), name=path.stem, source=str(path))


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file, or a one-line ConfigError naming it and why it cannot be read."""
    if not path.exists():
        raise ConfigError([("", "file not found")], file=path)
    if not path.is_file():
        raise ConfigError([("", "a folder, not a TOML file")], file=path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"not UTF-8 text ({exc.reason} at byte {exc.start})")], file=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"invalid TOML: {exc}")], file=path) from None


_INT_KEYS = {"threads"}
_TOP_KEYS = {"backend", "quant", "threads", "bench", "budget", "regression"}


def _check_number(value: Any, *, integer: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected {'an integer' if integer else 'a number'}, got {type(value).__name__} {value!r}"
    if integer and not isinstance(value, int):
        return f"expected an integer, got {value!r}"
    return None


def _table(raw: Mapping[str, Any], key: str, problems: list[tuple[str, str]]) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        problems.append((key, f"expected a table, got {type(value).__name__}"))
        return {}
    return value


def _number_table(raw: Mapping[str, Any], key: str, schema: type, problems: list[tuple[str, str]], *, integer: bool,
                  invalid: Callable[[str, Any], str | None]) -> dict[str, Any]:
    """A `[key]` table of numbers whose allowed names are `schema`'s fields; problems are collected, not raised."""
    allowed = {f.name for f in fields(schema)}
    values: dict[str, Any] = {}
    for name, value in _table(raw, key, problems).items():
        if name not in allowed:
            problems.append((f"{key}.{name}", f"unknown key (allowed: {', '.join(sorted(allowed))})"))
            continue
        why = _check_number(value, integer=integer) or invalid(name, value)
        if why:
            problems.append((f"{key}.{name}", why))
        else:
            values[name] = value if integer else float(value)
    return values


def _build_target(raw: Mapping[str, Any], *, name: str, source: str) -> Target:
    # Imported here: the backend registry names its backends and quant levels without heavy imports.
    from edgeft.backends.registry import backend_names, parse_options, quant_levels

    problems: list[tuple[str, str]] = []
    backend = raw.get("backend")
    for key in raw:
        if key in backend_names() and key != backend:
            problems.append((key, f"the [{key}] table is for backend {key}; this profile's backend is {backend}"))
        elif key not in _TOP_KEYS and key != backend:
            problems.append((key, f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS | {str(backend)}))})"))

    if backend is None:
        problems.append(("backend", "missing (one of: " + ", ".join(backend_names()) + ")"))
    elif backend not in backend_names():
        problems.append(("backend", f"unknown backend {backend!r} (known: {', '.join(backend_names())})"))

    quant = raw.get("quant")
    if quant is None:
        problems.append(("quant", "missing"))
    elif not isinstance(quant, str):
        problems.append(("quant", f"expected a string, got {type(quant).__name__}"))
    elif backend in backend_names() and quant != AUTO_QUANT and quant not in quant_levels(backend):
        problems.append(("quant", f"unknown level {quant!r} for backend {backend} (known: {', '.join(quant_levels(backend))})"))

    threads = raw.get("threads", Target.threads)
    why = _check_number(threads, integer=True)
    if why:
        problems.append(("threads", why))
    elif threads < 0:
        problems.append(("threads", f"must be 0 (all cores) or more, got {threads}"))

    bench_values = _number_table(
        raw, "bench", BenchSettings, problems, integer=True,
        invalid=lambda k, v: (f"must be {'0 or more' if k == 'warmup' else 'at least 1'}, got {v}"
                              if v < (0 if k == "warmup" else 1) else None),
    )
    budget_values = _number_table(
        raw, "budget", Budget, problems, integer=False,
        invalid=lambda k, v: f"must be positive, got {v}" if v < 0 or (v == 0 and k not in QUALITY_ZERO_OK) else None,
    )
    options = parse_options(backend, _table(raw, backend, problems), problems) if backend in backend_names() else None
    regression_values = _number_table(
        raw, "regression", Regression, problems, integer=False,
        invalid=lambda k, v: f"must be a positive percentage, got {v}" if v <= 0 else None,
    )

    bench = BenchSettings(**bench_values)  # the valid values, defaults for the rest: checked with the others
    if bench.prompt_tokens + bench.new_tokens > bench.context:
        problems.append(("bench", f"prompt_tokens + new_tokens ({bench.prompt_tokens + bench.new_tokens}) exceed context "
                                  f"({bench.context})"))
    if problems:
        raise ConfigError(problems, file=source)
    return Target(
        name=name,
        backend=backend,
        quant=quant,
        threads=threads,
        bench=bench,
        budget=Budget(**budget_values),
        options=options,
        regression=Regression(**regression_values),
        source=source,
    )
