"""Sequence-level distillation data: the teacher writes targets for records that have none.

Generation runs through the registered teacher backend's runner (`BackendInfo.teacher`, a
`Sampler`): the one whose runtime generates fastest on a CPU for a small teacher, several times
faster than transformers' generate. The backend runs a teacher already in its format as is and
exports any other once, cached. Prompts are rendered with the teacher's chat template by the HF tokenizer, so the token
ids match training exactly. Targets are cached on disk keyed by the teacher's sha256, the
generation settings and the rendered prompt, so a rerun regenerates nothing. Each target records
whether the teacher ended it or the token budget cut it: a cut one is trained without an end."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edgeft.atomic_io import write_text
from edgeft.manifest import source_entry
from edgeft.progress import progress, status

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from edgeft.backends.base import Sampler
    from edgeft.models import ModelSource

CACHE_FLUSH_EVERY = 16  # generations between cache writes, so an interrupted run keeps most of its work
# Sampling (temperature > 0) keeps the tokens the usual filters keep: the 40 likeliest, within
# 95 % of the mass, at least 5 % of the top token's probability. Pinned here, not left to a
# runtime's defaults, because the cache key assumes they never change.
SAMPLE_TOP_K, SAMPLE_TOP_P, SAMPLE_MIN_P = 40, 0.95, 0.05


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    temperature: float
    seed: int

    def key(self) -> str:
        if self.temperature <= 0:
            return f"max_new_tokens={self.max_new_tokens};temperature=0;seed=0"
        return (f"max_new_tokens={self.max_new_tokens};temperature={self.temperature:g};seed={self.seed};"
                f"top_k={SAMPLE_TOP_K};top_p={SAMPLE_TOP_P:g};min_p={SAMPLE_MIN_P:g};per_prompt_seed")

    def prompt_seed(self, prompt_text: str) -> int:
        """Fixed per prompt, so reruns and half-filled caches agree; different across prompts, so
        they do not all draw the same random numbers."""
        return int.from_bytes(hashlib.sha256(f"{self.seed}\x00{prompt_text}".encode("utf-8")).digest()[:4], "little")


def teacher_hash(source: "ModelSource") -> str:
    entry = source_entry(source.label, source.path)
    h = hashlib.sha256()
    for f in entry["files"]:
        h.update(f"{f['path']}:{f['sha256']}\n".encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    root = os.environ.get("EDGEFT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "edgeft")
    return Path(root) / "teacher-targets"


class TargetCache:
    """prompt key -> generated target and whether the teacher ended it, one JSON file per
    teacher+settings, rewritten atomically. An entry without the second (an older cache) is regenerated."""

    def __init__(self, cache_dir: Path, teacher_sha: str, settings: GenerationSettings):
        self.settings = settings
        self.prefix = hashlib.sha256(f"{teacher_sha}\x00{settings.key()}".encode()).hexdigest()
        self.path = cache_dir / f"{self.prefix[:32]}.json"
        self.entries: dict[str, list] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("prefix") == self.prefix:
                    self.entries = dict(data.get("targets", {}))
            except (json.JSONDecodeError, OSError, AttributeError):
                self.entries = {}  # a damaged cache is only a cache: regenerate
        self.dirty = 0

    def key(self, prompt_text: str) -> str:
        return hashlib.sha256(f"{self.prefix}\x00{prompt_text}".encode("utf-8")).hexdigest()

    def get(self, prompt_text: str) -> tuple[str, bool] | None:
        entry = self.entries.get(self.key(prompt_text))
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], bool)):
            return None
        return entry[0], entry[1]

    def put(self, prompt_text: str, target: str, ends: bool) -> None:
        self.entries[self.key(prompt_text)] = [target, ends]
        self.dirty += 1
        if self.dirty >= CACHE_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.dirty:
            write_text(self.path, json.dumps({"prefix": self.prefix, "settings": self.settings.key(), "targets": self.entries},
                                             ensure_ascii=False))
            self.dirty = 0


def _stop_ids(tokenizer: "PreTrainedTokenizerBase", llm: "Sampler") -> set[int]:
    ids = {int(llm.eos_token_id())}
    for tid in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        if tid is not None:
            ids.add(int(tid))
    for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(int(tid))
    return ids


@dataclass
class SynthesisResult:
    targets: list[str]
    ends: list[bool]  # False: the token budget cut the answer, not the teacher
    generated: int  # how many came from the teacher in this run
    cached: int  # how many came from the cache
    generated_tokens: int
    seconds: float


FREE_CORES_WINDOW_S = 1.0  # how long the other processes' CPU use is watched before the teacher starts


def free_cores(others: float | None = None, cores: int | None = None) -> int:
    """Threads for the teacher when none were asked for: the cores no other process is using.

    llama.cpp's threads spin while they wait, so a thread on a core another job holds slows every
    thread down (benchmarks/README.md, "Teacher synthesis": on a loaded two-core machine one thread
    beat two by 3x, while on a quiet one two beat one). `others` is how many cores other processes
    keep busy, watched for FREE_CORES_WINDOW_S while this one waits (bench.machine.OtherLoad). Not
    the load average: it also counts, for a minute after, what this build's own earlier stages and
    their children did, and `edgeft build` gave the teacher one thread on a quiet machine after its
    student search, about 35 s more for the demo's answers."""
    cores = cores or os.cpu_count() or 1
    if others is None:
        import time

        from edgeft.bench.machine import OtherLoad

        with OtherLoad() as watch:
            time.sleep(FREE_CORES_WINDOW_S)
        if watch.cores is None:  # no /proc/stat on this platform: leave a core free
            return max(1, cores // 2)
        others = watch.cores
    return max(1, min(cores, cores - round(others)))


def synthesize(source: "ModelSource", tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[str], prompt_ids: Sequence[list[int]],
               settings: GenerationSettings, cache_dir: Path, context: int, threads: int = 0) -> SynthesisResult:
    """Teacher targets for rendered `prompts` (with their token ids), from the cache or generated."""
    import time

    teacher_sha = teacher_hash(source)
    cache = TargetCache(cache_dir, teacher_sha, settings)
    out: list[tuple[str, bool] | None] = [cache.get(p) for p in prompts]
    todo = [i for i, t in enumerate(out) if t is None]
    start = time.perf_counter()
    n_tokens = 0
    if todo:
        from edgeft.backends.base import Sampling
        from edgeft.backends.registry import get_backend, teacher_backend

        backend = get_backend(teacher_backend().name)
        status(f"teacher {source.label}: writing {len(todo)} targets ({len(prompts) - len(todo)} cached) ...")
        threads = threads or free_cores()
        llm = backend.teacher(source, cache_dir, context=context, threads=threads, seed=settings.seed)
        stop = _stop_ids(tokenizer, llm)
        try:
            for i in progress(todo, desc="teacher", total=len(todo)):
                budget = min(settings.max_new_tokens, context - len(prompt_ids[i]))
                sampling = Sampling(temperature=settings.temperature, top_k=SAMPLE_TOP_K, top_p=SAMPLE_TOP_P,
                                    min_p=SAMPLE_MIN_P, seed=settings.prompt_seed(prompts[i]))
                new = llm.sample(list(prompt_ids[i]), budget, sampling, stop)
                n_tokens += len(new)
                text = tokenizer.decode(new, skip_special_tokens=True).strip()
                out[i] = (text, len(new) < budget)  # the sampler stops at a stop token or at the budget
                cache.put(prompts[i], *out[i])
        finally:
            cache.flush()
            llm.close()
    return SynthesisResult([t[0] if t else "" for t in out], [t[1] if t else True for t in out], len(todo),
                           len(prompts) - len(todo), n_tokens, time.perf_counter() - start)
