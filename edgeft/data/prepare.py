"""The data stage end to end: read -> validate -> clean -> dedup -> split -> cap augmentation ->
synthesize missing targets -> tokenize -> write train/eval JSONL and data_report.json.

`analyze` runs everything up to synthesis (it is what `edgeft data inspect` shows);
`prepare` finishes the job. Every default lives in DataConfig."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from edgeft.atomic_io import atomic_path, write_json
from edgeft.data.clean import content_key, garbage_reason, normalize_record
from edgeft.data.dedup import near_duplicates
from edgeft.data.readers import DataFileError, detect_format, read_raw
from edgeft.data.report import Step, histogram, length_stats
from edgeft.data.schema import SHAPE_FIELDS, Record, RecordProblem, STANDARD_FIELDS, to_record
from edgeft.data.split import is_eval
from edgeft.errors import ConfigError
from edgeft.progress import progress

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from edgeft.data.tokenize import Encoded, Templater
    from edgeft.models import ModelSource

DEFAULT_DATA = Path(__file__).with_name("default_prompts.jsonl")
LAYOUTS = ("pad", "pack", "none")
REPORT_NAME = "data_report.json"
# Bumped when `prepare` writes other rows from the same inputs (2: cut teacher answers, no end).
ROWS_FORMAT = 2


@dataclass(frozen=True)
class DataConfig:
    """Every data default lives here."""

    max_length: int = 512  # tokens per example after templating
    min_target_tokens: int = 1
    min_input_tokens: int = 1
    eval_fraction: float = 0.1
    augment_ratio: float = 1 / 3  # at most 1 augmented : 3 original in the training split
    synth_max_new_tokens: int = 128
    # Sampled, not greedy (0): the 135M default teacher's greedy answers fall into loops (83 of 279
    # repeat a 6-word run, 30 three times or more; 22 sampled at 1.0), and a sampled target is one
    # draw from the distribution the KD loss teaches whole, which greedy targets nearly are already.
    synth_temperature: float = 1.0
    synth_max_records: int | None = None  # cap on teacher generations per run (None = all)
    synth_threads: int = 0  # llama.cpp threads for the teacher (0 = the cores no other process is using)
    near_dup_threshold: float = 0.8  # estimated Jaccard similarity of character shingles
    near_dup_num_perm: int = 128
    near_dup_shingle: int = 5  # characters per shingle
    garbage_max_char_share: float = 0.5  # one character making up more than this share = garbage
    garbage_min_distinct_chars: int = 4
    strict: bool = False  # any bad record ends the run (exit code 2)
    field_map: tuple[tuple[str, str], ...] = ()  # (("input", "question"), ("target", "answer"))
    layout: str = "pad"  # "pad" each example to max_length, "pack" several per row, or "none"
    plain_format: str = "### Input:\n{input}\n\n### Response:\n"  # used when the tokenizer has no chat template
    seed: int = 0
    cache_dir: Path | None = None  # teacher-target cache; None = $EDGEFT_CACHE or ~/.cache/edgeft
    bad_examples_shown: int = 3  # bad-record reasons printed by the CLI

    def validate(self) -> None:
        problems: list[tuple[str, str]] = []
        if self.max_length < 2:
            problems.append(("max_length", f"must be at least 2, got {self.max_length}"))
        if self.min_target_tokens < 1:
            problems.append(("min_target_tokens", f"must be at least 1, got {self.min_target_tokens}"))
        if self.min_input_tokens < 1:
            problems.append(("min_input_tokens", f"must be at least 1, got {self.min_input_tokens}"))
        if not 0.0 <= self.eval_fraction < 1.0:
            problems.append(("eval_fraction", f"must be in [0, 1), got {self.eval_fraction}"))
        if self.augment_ratio < 0:
            problems.append(("augment_ratio", f"must be >= 0, got {self.augment_ratio}"))
        if self.synth_max_new_tokens < 1:
            problems.append(("synth_max_new_tokens", f"must be at least 1, got {self.synth_max_new_tokens}"))
        if self.synth_temperature < 0:
            problems.append(("synth_temperature", f"must be >= 0, got {self.synth_temperature}"))
        if self.synth_threads < 0:
            problems.append(("synth_threads", f"must be >= 0, got {self.synth_threads}"))
        if self.synth_max_records is not None and self.synth_max_records < 0:
            problems.append(("synth_max_records", f"must be >= 0, got {self.synth_max_records}"))
        if not 0.0 < self.near_dup_threshold <= 1.0:
            problems.append(("near_dup_threshold", f"must be in (0, 1], got {self.near_dup_threshold}"))
        if self.layout not in LAYOUTS:
            problems.append(("layout", f"must be one of {', '.join(LAYOUTS)}, got {self.layout!r}"))
        if "{input}" not in self.plain_format:
            problems.append(("plain_format", "must contain {input}"))
        for dst, src in self.field_map:
            if dst not in STANDARD_FIELDS:
                problems.append(("field", f"{dst}={src}: can only map to {', '.join(STANDARD_FIELDS)}"))
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class PreparedData:
    out_dir: Path
    train: Path  # JSONL; {"input_ids", "labels", "attention_mask"}; labels are -100 on prompt and padding tokens
    eval: Path  # same format
    report: Path  # data_report.json
    n_train: int
    n_eval: int
    train_records: Path | None = None  # the cleaned text records ({"input", "target", "metadata"}) behind `train`
    eval_records: Path | None = None
    rejected: int = 0  # bad records skipped (non-strict mode)
    bad_examples: tuple[str, ...] = ()  # the first few "place: reason" lines


@dataclass
class Analysis:
    """The result of every step before synthesis."""

    file: Path
    format: str
    records: list[Record]  # kept, in file order, split assigned
    steps: list[Step]
    n_read: int
    shapes: dict[str, int]
    fields: list[str]
    unused: list[str]  # fields no record's shape read: an answer column under another name, left to the teacher

    @property
    def rejected(self) -> Step:
        return self.steps[0]


def settings_key(config: DataConfig) -> dict[str, Any]:
    """What of the data stage a reuse key must cover besides the data and the model: its settings, and
    the rows format, so that a stage made by older code is not reused for rows it would no longer write."""
    return {**asdict(config), "rows_format": ROWS_FORMAT}


def _load(path: Path, config: DataConfig, step: Step, shapes: dict[str, int], fields: set[str],
          used: set[str] | None = None) -> tuple[list[Record], int]:
    """Read and map every record; `fields` gets every field name seen, `used` the ones some record's shape read."""
    field_map = dict(config.field_map)
    used = set() if used is None else used
    used.update(field_map.values())  # a mapped field is read (an absent one is refused by `analyze`)
    records: list[Record] = []
    n = 0
    for raw in read_raw(path):
        n += 1
        problem = raw.problem
        if problem is None:
            if isinstance(raw.value, dict):
                fields.update(raw.value.keys())
            try:
                rec = to_record(raw.value, field_map)
            except RecordProblem as exc:
                problem = str(exc)
            else:
                rec.place = raw.place
                shapes[rec.shape] = shapes.get(rec.shape, 0) + 1
                used.update(SHAPE_FIELDS.get(rec.shape, ()))
                records.append(rec)
                continue
        if config.strict:
            raise DataFileError(f"{problem} (--strict: bad records are not skipped)", file=path, place=raw.place)
        step.remove(raw.place, problem)
    if not records:
        first = f" (first: {step.examples[0]['place']}: {step.examples[0]['reason']})" if step.examples else ""
        raise DataFileError(f"no usable records: all {n} are bad{first}", file=path)
    return records, n


def check_records(data_file: Path, config: "DataConfig | None" = None) -> None:
    """Raise what reading would: a file that cannot be read at all, or one without a usable record. A
    build calls it first, so that bad data costs a second, not the minutes before its data stage."""
    _load(Path(data_file), config or DataConfig(), Step("validate"), {}, set())


def encode_records(templater: "Templater", records: Sequence[Record]) -> list["Encoded"]:
    """Each record's prompt and target as the training rows hold them (the prompt mask exact, the end of
    turn after a target that ends), reusing the prompt ids the analysis tokenized."""
    if not records:
        return []
    return templater.encode_pairs([(r.input, r.target, r.metadata.get("system")) for r in progress(records, desc="tokenize")],
                                  [r.prompt_ids for r in records], [r.target_ends for r in records])


def unused_note(unused: list[str]) -> str:
    """What to say of fields no record read: an answer column named other than the shape expects is otherwise
    silently replaced by the teacher's answers."""
    return (f"fields no record uses: {', '.join(unused)} (to train on one as the answer: --field target=NAME; as the "
            "prompt: --field input=NAME)")


def human_target_count(data_file: Path | None, config: "DataConfig | None" = None) -> int:
    """How many records of a data file come with their own target (not marked augmented): what a build
    can fine-tune on when the source needs no pruning. The shipped default prompts have none."""
    if data_file is None:
        return 0
    field_map = dict((config or DataConfig()).field_map)
    count = 0
    for raw in read_raw(Path(data_file)):
        if raw.problem is not None:
            continue
        try:
            rec = to_record(raw.value, field_map)
        except RecordProblem:
            continue
        if rec.target and not rec.metadata.get("augmented"):
            count += 1
    return count


def analyze(data_file: Path | None, tokenizer: "Callable[[], PreTrainedTokenizerBase]", config: DataConfig = DataConfig()) -> Analysis:
    """Read, validate, clean, deduplicate, split and length-filter; no model is run.

    `tokenizer` is a loader, called only once the file has been read, so a bad file is reported
    before any model is touched."""
    from edgeft.data.tokenize import Templater

    config.validate()
    path = Path(data_file) if data_file is not None else DEFAULT_DATA
    fmt = detect_format(path)
    rejected, garbage, exact, near, lengths = (Step("validate"), Step("garbage"), Step("exact_duplicates"),
                                               Step("near_duplicates"), Step("length"))
    shapes: dict[str, int] = {}
    fields: set[str] = set()
    used: set[str] = set()
    records, n_read = _load(path, config, rejected, shapes, fields, used)
    absent = [f"{dst}={src}" for dst, src in config.field_map if src not in fields]
    if absent:
        raise ConfigError([("--field", f"{', '.join(absent)}: no record of {path.name} has that field "
                                       f"(fields found: {', '.join(sorted(fields)) or 'none'})")])

    normalize = Step("normalize")
    changed = 0
    for rec in records:
        before = (rec.input, rec.target)
        normalize_record(rec)
        changed += (rec.input, rec.target) != before
    normalize.extra["changed"] = changed

    kept: list[Record] = []
    for rec in records:
        why = garbage_reason(rec.input, max_char_share=config.garbage_max_char_share, min_distinct_chars=config.garbage_min_distinct_chars)
        if why is None and rec.target is not None:
            why = garbage_reason(rec.target, max_char_share=config.garbage_max_char_share,
                                 min_distinct_chars=config.garbage_min_distinct_chars, numbers_ok=True)
            why = None if why is None else f"target: {why}"
        elif why is not None:
            why = f"input: {why}"
        if why:
            garbage.remove(rec.place, why)
        else:
            kept.append(rec)

    seen: dict[str, str] = {}
    unique: list[Record] = []
    for rec in kept:
        rec.key = content_key(rec)
        if rec.key in seen:
            exact.remove(rec.place, "exact duplicate", duplicate_of=seen[rec.key])
        else:
            seen[rec.key] = rec.place
            unique.append(rec)

    texts = [f"{r.input}\n{r.target or ''}" for r in unique]
    dupes = near_duplicates(texts, threshold=config.near_dup_threshold, num_perm=config.near_dup_num_perm,
                            shingle=config.near_dup_shingle, seed=config.seed + 1)
    for i, j in dupes.items():
        near.remove(unique[i].place, "near duplicate", duplicate_of=unique[j].place)
    unique = [r for i, r in enumerate(unique) if i not in dupes]

    templater = Templater(tokenizer(), config.plain_format)
    prompt_ids = templater.encode_prompts([(r.input, r.metadata.get("system")) for r in unique])
    input_ids = templater.encode_texts([r.input for r in unique])
    with_target = [i for i, r in enumerate(unique) if r.target is not None]
    target_ids = dict(zip(with_target, templater.encode_texts([unique[i].target for i in with_target])))
    final: list[Record] = []
    room = config.max_length - config.min_target_tokens
    for i, rec in enumerate(unique):
        n_prompt = len(prompt_ids[i])
        n_target = len(target_ids[i]) if i in target_ids else None
        if len(input_ids[i]) < config.min_input_tokens:
            lengths.remove(rec.place, "input too short", tokens=len(input_ids[i]))
        elif n_prompt > room:
            lengths.remove(rec.place, "prompt too long for max_length", tokens=n_prompt, max_length=config.max_length)
        elif n_target is not None and n_target < config.min_target_tokens:
            lengths.remove(rec.place, "target too short", tokens=n_target)
        elif n_target is not None and n_prompt + n_target > config.max_length:
            # the template adds a few tokens around the target; the exact check happens after tokenization
            lengths.remove(rec.place, "prompt + target too long for max_length", tokens=n_prompt + n_target,
                           max_length=config.max_length)
        else:
            rec.prompt_ids = prompt_ids[i]
            rec.eval = is_eval(rec.input, config.eval_fraction, config.seed)
            final.append(rec)

    steps = [rejected, normalize, garbage, exact, near, lengths]
    return Analysis(path, fmt, final, steps, n_read, shapes, sorted(fields), sorted(fields - used))


def write_prompt_records(data_file: Path | None, tokenizer_dir: Path, out: Path, config: DataConfig = DataConfig()) -> int:
    """The training split's prompts of a data file (the shipped prompts when None), cleaned as the data
    stage cleans them, chat-templated and tokenized by the tokenizer in `tokenizer_dir`, as JSONL
    records with `input_ids`: text of the app's own kind for a build that trains nothing (its
    importance matrix). Returns the number of records written."""
    from transformers import AutoTokenizer

    analysis = analyze(data_file, lambda: AutoTokenizer.from_pretrained(tokenizer_dir), config)
    return _write_jsonl(out, ({"input_ids": list(r.prompt_ids)} for r in analysis.records if not r.eval))


def is_augmented(rec: Record, has_originals: bool) -> bool:
    """A record marked augmented by the user, or a teacher-written target in a data set that also
    has human targets (in a set with no human targets the teacher's answers are the data itself)."""
    if rec.metadata.get("augmented") is True:
        return True
    return rec.target is None and has_originals


def cap_augmented(records: list[Record], ratio: float, step: Step) -> list[Record]:
    """Keep at most ratio x (original training records) augmented ones in the training split; which
    ones is decided by content hash, so the choice is stable and independent of file order."""
    originals = [r for r in records if r.target is not None and r.metadata.get("augmented") is not True]
    has_originals = bool(originals)
    train_orig = sum(1 for r in originals if not r.eval)
    train_aug = [r for r in records if not r.eval and is_augmented(r, has_originals)]
    # with no originals at all, teacher targets are not augmentation, and user-marked augmentations have nothing to mix with
    allowed = int(ratio * train_orig + 1e-9)
    step.extra.update({"train_original": train_orig, "train_augmented_before": len(train_aug), "ratio": ratio,
                       "teacher_targets_count_as_augmented": has_originals})
    drop: set[int] = set()
    if len(train_aug) > allowed:
        ranked = sorted(train_aug, key=lambda r: r.key)
        drop = {id(r) for r in ranked[allowed:]}
    out = []
    for r in records:
        if id(r) in drop:
            why = "marked augmented" if r.metadata.get("augmented") is True else \
                "no target of its own (the teacher's answer would count as augmentation beside records with targets)"
            step.remove(r.place, f"{why}: beyond --augment-ratio {ratio:g} x the {train_orig} training records with targets")
        else:
            if is_augmented(r, has_originals):
                r.metadata = {**r.metadata, "augmented": True}
            out.append(r)
    step.extra["train_augmented_kept"] = sum(1 for r in out if not r.eval and r.metadata.get("augmented") is True)
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            fh.write("\n")
            n += 1
    return n


def prepare(data_file: Path | None, model: str, out_dir: Path, config: DataConfig = DataConfig()) -> PreparedData:
    """model is a model-source string for edgeft.models.resolve ('default', a HF folder, a .gguf).
    data_file None means the shipped default prompts. Records without a target get one from the
    teacher (= model), cached on disk keyed by teacher hash + input."""
    from edgeft import models

    config.validate()
    source = models.resolve(model)
    return prepare_with(data_file, source, lambda: models.load_tokenizer(source), Path(out_dir), config)


def prepare_with(data_file: Path | None, source: "ModelSource", load_tokenizer: "Callable[[], PreTrainedTokenizerBase]",
                 out_dir: Path, config: DataConfig) -> PreparedData:
    """`prepare` for a resolved source; the tokenizer is loaded once, after the data file has been read."""
    from edgeft.data.synthesize import GenerationSettings, default_cache_dir, synthesize
    from edgeft.data.tokenize import Templater, pack_examples, pad_example, pad_token_id, unpadded_example

    started = time.perf_counter()
    tokenizer_once = functools.cache(load_tokenizer)
    an = analyze(data_file, tokenizer_once, config)
    if an.unused:
        from edgeft.progress import status

        status(f"data: warning: {unused_note(an.unused)}")
    tokenizer = tokenizer_once()
    cap = Step("augment_cap")
    records = cap_augmented(an.records, config.augment_ratio, cap)
    templater = Templater(tokenizer, config.plain_format)

    # synthesis: the teacher writes targets for records without one
    synth = Step("synthesis")
    need = [r for r in records if r.target is None]
    if config.synth_max_records is not None and len(need) > config.synth_max_records:
        over = sorted(need, key=lambda r: r.key)[config.synth_max_records:]
        over_ids = {id(r) for r in over}
        for r in over:
            synth.remove(r.place, "above synth_max_records")
        records = [r for r in records if id(r) not in over_ids]
        need = [r for r in need if id(r) not in over_ids]
    if need:
        prompts = [templater.prompt_text(r.input, r.metadata.get("system")) for r in need]
        ids = [r.prompt_ids if r.prompt_ids is not None else templater.encode_texts([p])[0] for r, p in zip(need, prompts)]
        settings = GenerationSettings(config.synth_max_new_tokens, config.synth_temperature, config.seed)
        # In a child: llama.cpp's native code runs the teacher, and a crash there must not take the CLI down.
        from edgeft.child import call

        result = call(synthesize, source, tokenizer, prompts, ids, settings, config.cache_dir or default_cache_dir(),
                      context=config.max_length + config.synth_max_new_tokens, threads=config.synth_threads,
                      what="the teacher writing targets")
        for r, text, ends in zip(need, result.targets, result.ends):
            r.target = text or None
            r.target_source = "teacher"
            r.target_ends = ends
            r.metadata = {**r.metadata, "target_source": "teacher", "target_ends": ends}
        synth.extra.update({"generated": result.generated, "cached": result.cached, "generated_tokens": result.generated_tokens,
                            "cut_at_budget": sum(not e for e in result.ends),
                            "seconds": round(result.seconds, 2), "settings": settings.key(), "teacher": source.label})
        for r in need:
            if r.target is None:
                synth.remove(r.place, "teacher wrote an empty target")
        records = [r for r in records if r.target is not None]
    else:
        synth.extra.update({"generated": 0, "cached": 0, "generated_tokens": 0, "seconds": 0.0})

    # tokenization with the exact prompt mask, then the final length check
    tokens = Step("tokenize")
    encoded = encode_records(templater, records)
    kept: list[tuple[Record, Any]] = []
    for r, enc in zip(records, encoded):
        if len(enc.target_ids) < config.min_target_tokens:
            tokens.remove(r.place, "target too short", tokens=len(enc.target_ids))
        elif enc.n_tokens > config.max_length:
            tokens.remove(r.place, "too long for max_length after templating", tokens=enc.n_tokens, max_length=config.max_length)
        else:
            kept.append((r, enc))
    if not kept:
        raise DataFileError("no records left after cleaning and length filters (removed, by step and reason: "
                            + "; ".join(f"{s.name}: " + ", ".join(f"{why} x{n}" for why, n in s.reasons.items())
                                        for s in an.steps + [cap, synth, tokens] if s.removed)
                            + ")", file=an.file)

    pad_id = pad_token_id(tokenizer)

    def rows(split_eval: bool) -> Iterable[dict[str, Any]]:
        """Rows are produced while they are written: a padded split held in memory costs GBs."""
        encs = [e for r, e in kept if r.eval == split_eval]
        if config.layout == "pack":
            return pack_examples(encs, config.max_length, pad_id)
        if config.layout == "none":
            return (unpadded_example(e) for e in encs)
        return (pad_example(e, config.max_length, pad_id) for e in encs)

    out_dir.mkdir(parents=True, exist_ok=True)
    train, evalp = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    train_rec, eval_rec = out_dir / "train.records.jsonl", out_dir / "eval.records.jsonl"
    n_train = _write_jsonl(train, rows(False))
    n_eval = _write_jsonl(evalp, rows(True))
    _write_jsonl(train_rec, ({**r.to_json(), "place": r.place} for r, _ in kept if not r.eval))
    _write_jsonl(eval_rec, ({**r.to_json(), "place": r.place} for r, _ in kept if r.eval))

    steps = an.steps + [cap, synth, tokens]
    n_ex = config.bad_examples_shown
    bad = tuple(f"{e['place']}: {e['reason']}" for e in an.rejected.examples[:n_ex])
    report = {
        "data_file": {"path": str(an.file), "format": an.format, "sha256": _file_sha256(an.file),
                      "default": data_file is None, "shapes": an.shapes, "fields_found": an.fields,
                      "fields_unused": an.unused},
        "model": {"label": source.label, "kind": source.kind, "chat_template": templater.chat},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "counts": {"read": an.n_read, "rejected": an.rejected.removed, "removed": sum(s.removed for s in steps[1:]),
                   "train_examples": sum(1 for r, _ in kept if not r.eval), "eval_examples": sum(1 for r, _ in kept if r.eval),
                   "train_rows": n_train, "eval_rows": n_eval,
                   "teacher_targets": sum(1 for r, _ in kept if r.target_source == "teacher"),
                   "teacher_targets_cut": sum(1 for r, _ in kept if not r.target_ends),
                   "augmented_in_train": sum(1 for r, _ in kept if not r.eval and r.metadata.get("augmented") is True)},
        "steps": [s.to_json() for s in steps],
        "tokens": {
            "prompt": length_stats([len(e.prompt_ids) for _, e in kept]),
            "target": length_stats([len(e.target_ids) for _, e in kept]),
            "total": length_stats([e.n_tokens for _, e in kept]),
            "histogram": histogram([e.n_tokens for _, e in kept]),
        },
        "outputs": {"train": train.name, "eval": evalp.name, "train_records": train_rec.name, "eval_records": eval_rec.name},
        "seconds": round(time.perf_counter() - started, 2),
    }
    report_path = out_dir / REPORT_NAME
    write_json(report_path, report)
    return PreparedData(out_dir=out_dir, train=train, eval=evalp, report=report_path, n_train=n_train, n_eval=n_eval,
                        train_records=train_rec, eval_records=eval_rec, rejected=an.rejected.removed, bad_examples=bad)


def inspect_data(data_file: Path | None, model: str, config: DataConfig = DataConfig()) -> dict[str, Any]:
    """Counts, fields found, token lengths, duplicates and what cleaning would remove; writes nothing."""
    from edgeft import models

    from edgeft.data.tokenize import Templater

    config.validate()
    source = models.resolve(model)
    tokenizer = functools.cache(lambda: models.load_tokenizer(source))
    an = analyze(data_file, tokenizer, config)
    cap = Step("augment_cap")
    kept = cap_augmented(list(an.records), config.augment_ratio, cap)
    prompt_lengths = [len(r.prompt_ids) for r in kept]
    # Target tokens as `data prepare` counts and trains them: with the end of turn the template adds.
    with_target = [r for r in kept if r.target is not None]
    target_lengths = [len(e.target_ids) for e in encode_records(Templater(tokenizer(), config.plain_format), with_target)]
    return {
        "data_file": {"path": str(an.file), "format": an.format, "default": data_file is None},
        "counts": {"read": an.n_read, "rejected": an.rejected.removed, "kept": len(kept),
                   "with_target": sum(1 for r in kept if r.target is not None),
                   "without_target": sum(1 for r in kept if r.target is None),
                   "train": sum(1 for r in kept if not r.eval), "eval": sum(1 for r in kept if r.eval)},
        "shapes": an.shapes,
        "fields_found": an.fields,
        "fields_unused": an.unused,
        "task_types": _tally(r.metadata.get("task_type") for r in kept),
        "domains": _tally(r.metadata.get("domain") for r in kept),
        "steps": [s.to_json() for s in an.steps + [cap]],
        "tokens": {"prompt": length_stats(prompt_lengths), "prompt_histogram": histogram(prompt_lengths),
                   "target": length_stats(target_lengths), "target_histogram": histogram(target_lengths)},
        "model": source.label,
    }


def _tally(values: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        k = str(v) if v is not None else "(none)"
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
