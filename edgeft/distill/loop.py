"""The distillation run: student, teacher cache, evaluation before and after, the training loop.

One readable function per phase, in the order they run (the shape of torchtune's KD recipe):
build the student -> cache the teacher -> evaluate -> train (AdamW, warm-up + cosine,
accumulation, clipping, checkpoints) -> evaluate -> write the adapter atomically."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from edgeft import models
from edgeft.atomic_io import atomic_dir, write_json, write_text
from edgeft.distill import ewc
from edgeft.distill import own_answers
from edgeft.distill import stand_in as stand_in_mod
from edgeft.distill import student as student_mod
from edgeft.distill import teacher_cache
from edgeft.distill.block_scores import block_nlls
from edgeft.distill.config import DistillConfig
from edgeft.distill.evaluate import evaluate, plot_curve, write_csv
from edgeft.distill.kd_loss import kd_loss
from edgeft.distill.logits import target_logits
from edgeft.distill.records import IGNORE, Record, collate, read_records
from edgeft.errors import EdgeftError
from edgeft.progress import enabled as progress_enabled
from edgeft.progress import mute_import_noise
from edgeft.progress import status

if TYPE_CHECKING:
    import torch

from edgeft.merge import ADAPTER_META, nf4_engine, read_adapter_meta  # noqa: E402  (one name for the file, shared with merge)


class TrainingError(EdgeftError):
    """Training that cannot go on (a NaN loss, adapters without gradient). Exit code 1."""

    exit_code = 1


@dataclass
class _Teacher:
    source: "models.ModelSource"
    hash: str
    tokenizer: Any
    _model: Any = None

    role: str = ""  # what the teacher is here, when it is not trained against (targets alone)

    def model(self):
        if self._model is None:
            status(f"loading teacher {self.source.label}{self.role}")
            self._model = models.load_model(self.source)
        return self._model

    def release(self) -> None:
        self._model = None


def _source_hash(source: "models.ModelSource") -> str:
    from edgeft.manifest import source_entry

    entry = source_entry(source.label, source.path)
    return json.dumps([(f["path"], f["sha256"]) for f in entry["files"]])


def _pad_id(tok) -> int:
    for tid in (tok.pad_token_id, tok.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


# ---- the student ---------------------------------------------------------------------------

LOG_EVERY_S = 30.0  # without a progress bar, a training status line at most this often
CALIBRATION_RECORDS = 16  # training records the "block" layer pick scores each candidate on
SCREEN_EVERY = 4  # the pick first scores every candidate on every 4th calibration record...
FINALISTS = 8  # ...and only the best 8 on the rest


def _target_count(records: Sequence[Record]) -> int:
    return sum(sum(t != IGNORE for t in r.labels[1:]) for r in records)


def _calibration(records: Sequence[Record]) -> list[Record]:
    """CALIBRATION_RECORDS training records spread over the split."""
    step = max(1, len(records) // CALIBRATION_RECORDS)
    return list(records[::step][:CALIBRATION_RECORDS])


def _block_pick(tmodel, n_keep: int, records: Sequence[Record], pad_id: int,
                config: DistillConfig) -> tuple[tuple[int, ...], dict, float]:
    """The "block" layer pick: each contiguous-block removal scored by the pruned model's NLL on a
    spread of training records (never the eval split), the best kept; returns its kept layers, the
    scores for student.json and its NLL on all of `_calibration(records)`. The scores are computed from
    the teacher's hidden states (block_scores), for about half the cost of running every pruning.

    In two rounds, since the ranking's head is clear after a few records: every candidate on a
    quarter of the calibration records, then the FINALISTS best of them on the rest, ranked by the
    whole set. On the tight demo (30 candidates dropping one layer) the best on all 16 records is
    also first on the quarter, and the two rounds cost 216 record passes instead of 480."""
    n_teacher = tmodel.config.num_hidden_layers
    cands = student_mod.block_candidates(n_teacher, n_keep)  # also the one-line check of n_keep
    calib = _calibration(records)
    screen, rest = calib[::SCREEN_EVERY], [r for i, r in enumerate(calib) if i % SCREEN_EVERY]
    two_rounds = len(cands) > FINALISTS and rest
    bar = None
    if progress_enabled():
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(cands) + (FINALISTS if two_rounds else 0), desc="scoring layer blocks", leave=False, file=sys.stderr)
    on_done = bar.update if bar is not None else None
    try:
        if two_rounds:
            first = dict(zip(cands, block_nlls(tmodel, cands, screen, pad_id, config.eval_batch_size, on_done=on_done)))
            finalists = sorted(cands, key=first.__getitem__)[:FINALISTS]
            second = dict(zip(finalists, block_nlls(tmodel, finalists, rest, pad_id, config.eval_batch_size, on_done=on_done)))
            n1, n2 = _target_count(screen), _target_count(rest)
            whole = {c: (first[c] * n1 + second[c] * n2) / (n1 + n2) for c in finalists}
        else:
            whole = dict(zip(cands, block_nlls(tmodel, cands, calib, pad_id, config.eval_batch_size, on_done=on_done)))
        keep, scores = student_mod.best_block(n_teacher, n_keep, lambda c: whole.get(c, math.inf))
    finally:
        if bar is not None:
            bar.close()
    pick = {"calibration_records": len(calib), "nll_by_dropped_block": {k: v for k, v in scores.items() if math.isfinite(v)}}
    if two_rounds:
        _, screened = student_mod.best_block(n_teacher, n_keep, first.__getitem__)
        pick |= {"screen_records": len(screen), "finalists": FINALISTS, "nll_on_screen_by_dropped_block": screened}
    return keep, pick, whole[keep]


def build_student(teacher: _Teacher, config: DistillConfig, out_dir: Path, train_recs: Sequence[Record] = (),
                  pad_id: int = 0) -> tuple[Path, "student_mod.StudentInfo"]:
    """The student's HF folder (written under out_dir/student unless a HF student was given) and its description."""
    tmodel = teacher.model()
    pick: dict = {}
    folds, stand_in = [], {}
    dropped_nll: float | None = None  # the pruned student's calibration NLL, when the pick measured it
    given: str | None = None  # the student's name when one was given whole
    n_teacher = tmodel.config.num_hidden_layers
    if config.student is not None:
        src = models.resolve(config.student)
        given = src.label
        stok = models.load_tokenizer(src)
        folder = src.path if src.kind == "hf" else models.materialize_hf(src, out_dir / "student")
        scfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        student_mod.check_vocabulary(teacher.tokenizer, stok, tmodel.config.vocab_size, int(scfg.get("vocab_size", -1)), src.path)
        smodel = models.load_model(models.resolve(folder))
        info = student_mod.info(smodel, None, n_teacher, config.target_quant)
    else:
        period = student_mod.layer_period(getattr(tmodel.config, "layer_types", None))
        if config.student_layers is not None:
            student_mod.check_pattern_count(n_teacher, config.student_layers, period)
        n_keep = config.student_layers or student_mod.nearest_count(n_teacher, max(1, n_teacher // 2), period)
        if config.keep_layers is not None:
            keep = student_mod.check_layers(config.keep_layers, n_teacher)
        elif config.layer_pick == "block":
            keep, pick, dropped_nll = _block_pick(tmodel, n_keep, train_recs, pad_id, config)
        else:
            keep = student_mod.pick_layers(n_teacher, n_keep, config.layer_pick)
        student_mod.check_pattern(tmodel, keep)
        smodel = student_mod.drop_layers(tmodel, keep)
        folds, stand_in = _stand_in(tmodel, smodel, keep, train_recs, pad_id, config, dropped_nll)
        folder = out_dir / "student"
        with atomic_dir(folder) as tmp:
            smodel.save_pretrained(tmp)
            teacher.tokenizer.save_pretrained(tmp)
        info = student_mod.info(smodel, keep, n_teacher, config.target_quant)
        if folds:
            info = dataclasses.replace(info, stands_for=stand_in_mod.layer_map(keep, folds))
    write_json(out_dir / "student.json", {"path": str(folder), "teacher": teacher.source.label, **info.to_dict(),
                                          **({"layer_pick": pick} if pick else {}),
                                          **({"stand_in": stand_in} if stand_in else {})})
    status((f"student: {given} as given, {info.layers} layers" if given is not None
            else f"student: {info.layers} of the teacher's {info.teacher_layers} layers")
           + (f" {list(info.kept_layers)}" if info.kept_layers else "")
           + f", {info.parameters / 1e6:.1f} M parameters"
           + (f", about {info.est_bytes / 1e6:.0f} MB at {info.quant}" if info.est_bytes is not None else ""))
    if folds:
        nll = stand_in["calibration_nll"]
        one = len(folds) == 1 and folds[0].dropped[1] - folds[0].dropped[0] == 1
        status(f"a linear stand-in for dropped layer{'' if one else 's'} {', '.join(_span(f.dropped) for f in folds)}, folded into the MLP of "
               f"layer{'s' if len(folds) > 1 else ''} {', '.join(str(f.into) for f in folds)} ({folds[0].tokens:,} training tokens): "
               f"calibration NLL {nll['dropped']:.3f} -> {nll['stand_in']:.3f}")
    elif stand_in:
        status(f"no linear stand-in for the dropped layers: {stand_in['reason']}")
    return folder, info


def _span(run: tuple[int, int]) -> str:
    return str(run[0]) if run[1] - run[0] == 1 else f"{run[0]}-{run[1] - 1}"


def _stand_in(tmodel, smodel, keep: Sequence[int], records: Sequence[Record], pad_id: int, config: DistillConfig,
              dropped_nll: float | None) -> tuple[list, dict]:
    """distill.stand_in on the pruned student, in place, when the config asks and there are training records;
    `dropped_nll`, the block pick's score of this student on the same calibration records, spares evaluating it again."""
    if not config.stand_in or not records or len(keep) == tmodel.config.num_hidden_layers:
        return [], {}
    return stand_in_mod.stand_in(tmodel, smodel, keep, records, _calibration(records), pad_id, config.eval_batch_size,
                                 nll=lambda model, recs: evaluate(model, recs, pad_id, config.eval_batch_size).nll,
                                 dropped_nll=dropped_nll)


OWN_ANSWER_BATCH = 48  # prompts generated together: batching amortizes reading the weights once per token
OWN_ANSWERS_FILE = "own_answers.jsonl"  # in the prepared-data format, to read what the student was taught from


def _own_answers(student_dir: Path, tokenizer, records: Sequence[Record], pad_id: int, config: DistillConfig,
                 out_dir: Path) -> "own_answers.OwnAnswers":
    """The pruned student's greedy answers to the training prompts, before any training, as records
    for the teacher's cache (own_answers), also written to out_dir/own_answers.jsonl."""
    bar = None
    if progress_enabled():
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="the student's own answers", leave=False, file=sys.stderr)
    smodel = models.load_model(models.resolve(student_dir))
    try:
        own = own_answers.own_answer_records(smodel, records, new_tokens=config.own_answer_tokens,
                                             stop_ids=models.stop_ids(tokenizer, smodel), pad_id=pad_id,
                                             max_length=config.max_length, batch_size=OWN_ANSWER_BATCH,
                                             on_batch=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
        del smodel
    write_text(out_dir / OWN_ANSWERS_FILE, "".join(json.dumps({"input_ids": list(r.input_ids), "labels": list(r.labels),
                                                             "attention_mask": [1] * len(r.input_ids)}) + "\n"
                                                 for r in own.records))
    status(f"the student's own answers: {len(own.records)} training prompts, {own.tokens} tokens ({own.ended} ended "
           f"before {config.own_answer_tokens}), to train on the teacher's logits ({OWN_ANSWERS_FILE})")
    return own


# ---- the loop ------------------------------------------------------------------------------

def warmup_steps(config: DistillConfig) -> int:
    """The warm-up used: at most half the steps, so that a short run (`--steps 4` with a preset's 15
    warm-up steps) still reaches its learning rate."""
    return min(config.warmup_steps, config.steps // 2)


def _schedule(step: int, config: DistillConfig) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero at `steps`."""
    warm = warmup_steps(config)
    if step < warm:
        return (step + 1) / (warm + 1)
    span = max(1, config.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))


def _micro_batch(records: Sequence[Record], micro: int, config: DistillConfig) -> list[int]:
    """Record indices of micro-batch number `micro`: a fixed function of (seed, micro), so a
    resumed run sees exactly the batches an uninterrupted one would."""
    import torch

    n, bs = len(records), config.batch_size
    out = []
    for pos in range(micro * bs, micro * bs + bs):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        out.append(int(perm[i]))
    return out


def _optimizer_step(optimizer, scheduler) -> None:
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _trainable(model) -> dict[str, "torch.Tensor"]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(ckpt_root: Path, step: int, model, optimizer, scheduler, log: list[dict], config: DistillConfig) -> None:
    import torch

    state = {
        "step": step,
        "adapters": {n: p.detach().clone() for n, p in _trainable(model).items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "log": log,
        "config": config.to_dict(),
    }
    final = ckpt_root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        torch.save(state, tmp / "state.pt")
    old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for p in old[: -config.keep_checkpoints]:
        shutil.rmtree(p, ignore_errors=True)


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted(p for p in ckpt_root.glob("step-*") if (p / "state.pt").is_file())
    return done[-1] if done else None


_RESUMABLE_CHANGES = {"save_every", "keep_checkpoints", "steps", "eval_batch_size", "max_eval_records"}


def _load_checkpoint(path: Path, model, optimizer, scheduler, config: DistillConfig) -> tuple[int, list[dict]]:
    import torch

    state = torch.load(path / "state.pt", weights_only=False)
    saved = state["config"]
    changed = [k for k, v in config.to_dict().items() if k not in _RESUMABLE_CHANGES and saved.get(k) != v]
    if changed:
        raise EdgeftError(f"the checkpoint was made with other settings ({', '.join(changed)}); rerun without --resume "
                          "or with the same settings", file=path / "state.pt")
    params = _trainable(model)
    with torch.no_grad():
        for n, t in state["adapters"].items():
            params[n].copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["log"])


def hidden_state_loss(s_hidden, t_hidden, layer_map: Sequence[int], mask) -> "torch.Tensor":
    """Mean over student layers of 1 - cos(student output, teacher output at the layer it was copied
    from), over the tokens in `mask` [b, s]. Hidden states as transformers returns them: index 0 is
    the embedding output, index j + 1 the output of layer j (the last one after the final norm)."""
    import torch

    terms = []
    for i, t_layer in enumerate(layer_map):
        s_h = s_hidden[i + 1][mask]  # [n, d]
        t_h = t_hidden[t_layer + 1][mask].detach()  # [n, d]
        terms.append((1.0 - torch.nn.functional.cosine_similarity(s_h.float(), t_h.float(), dim=-1)).mean())
    return torch.stack(terms).mean()


def train(model, records: Sequence[Record], cache, teacher: _Teacher | None, pad_id: int, config: DistillConfig,
          ckpt_root: Path, resume: bool, layer_map: Sequence[int] | None = None,
          penalty: "Callable[[], torch.Tensor] | None" = None) -> list[dict]:
    """Optimize the adapters for `config.steps` optimizer steps; returns the per-step log.

    With `config.hidden_weight` > 0, `teacher` runs live for its hidden states and `layer_map[i]` is
    the teacher layer the student's layer i was copied from. `penalty` (EWC) is added once per
    optimizer step."""
    import torch

    from edgeft.distill.qlora import packed_layers

    params = list(_trainable(model).values())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, config))
    start, log = 0, []
    if resume and (ckpt := _latest_checkpoint(ckpt_root)) is not None:
        start, log = _load_checkpoint(ckpt, model, optimizer, scheduler, config)
        status(f"resuming from {ckpt.name}")
    elif ckpt_root.exists():
        shutil.rmtree(ckpt_root)
    if packed_layers(model):
        raise TrainingError(f"{packed_layers(model)} 4-bit layers hold bitsandbytes' CPU-repacked layout; training them "
                            "would give the adapters no gradient")

    bar = None
    if progress_enabled() and start < config.steps:
        from tqdm import tqdm
        import sys

        bar = tqdm(total=config.steps, initial=start, desc="distill", leave=False, file=sys.stderr)
    model.train()
    t0 = last_line = time.perf_counter()
    try:
        for step in range(start, config.steps):
            t_step = time.perf_counter()
            tokens, sums = 0, {"loss": 0.0, "kd": 0.0, "ce": 0.0, "hidden": 0.0, "ewc": 0.0}
            for a in range(config.grad_accum):
                idx = _micro_batch(records, step * config.grad_accum + a, config)
                batch = collate([records[i] for i in idx], pad_id)
                sel = batch["targets"] != IGNORE  # [b, s]
                hidden = config.hidden_weight > 0
                s_logits, out = target_logits(model, batch, output_hidden_states=hidden)  # [n, vocab], (record, position) order like the cache
                if cache is not None:
                    rows = [cache.rows(i) for i in idx]
                    t_ids = torch.cat([r[0] for r in rows])
                    t_lp = torch.cat([r[1] for r in rows])
                elif teacher is not None and config.alpha > 0:
                    rows = teacher_cache.teacher_topk(teacher.model(), batch, config.top_k)
                    t_ids = torch.cat([r[0] for r in rows])
                    t_lp = torch.cat([r[1] for r in rows])
                else:  # plain fine-tuning: no teacher term
                    t_ids = batch["targets"][sel].unsqueeze(-1)
                    t_lp = torch.zeros_like(t_ids, dtype=torch.float32)
                parts = kd_loss(s_logits, t_ids, t_lp, batch["targets"][sel], alpha=config.alpha, temperature=config.temperature)
                total = parts.total
                if hidden:
                    with torch.no_grad():
                        t_out = teacher.model().model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                                      output_hidden_states=True, use_cache=False)
                    h_loss = hidden_state_loss(out.hidden_states, t_out.hidden_states, layer_map, batch["attention_mask"].bool())
                    total = total + config.hidden_weight * h_loss
                    sums["hidden"] += float(h_loss.detach()) / config.grad_accum
                if penalty is not None:  # each micro-batch's loss is divided by grad_accum: whole, it counts once a step
                    p_loss = penalty()
                    total = total + p_loss
                    sums["ewc"] += float(p_loss.detach()) / config.grad_accum
                if not torch.isfinite(total.detach()):
                    raise TrainingError(f"the loss became {total.item()} at step {step + 1} (micro-batch {a + 1}); "
                                        "lower --lr or check the data; the last checkpoint is still usable")
                (total / config.grad_accum).backward()
                tokens += int(batch["attention_mask"].sum())
                sums["loss"] += total.item() / config.grad_accum
                sums["kd"] += float(parts.kd) / config.grad_accum
                sums["ce"] += float(parts.ce) / config.grad_accum
            norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            if not math.isfinite(norm):
                raise TrainingError(f"the gradient norm became {norm} at step {step + 1}; lower --lr")
            if norm == 0.0:
                raise TrainingError(f"the adapters received no gradient at step {step + 1} (a repacked 4-bit base "
                                    "or frozen adapters)")
            lr = optimizer.param_groups[0]["lr"]
            _optimizer_step(optimizer, scheduler)
            dt = time.perf_counter() - t_step
            log.append({"step": step + 1, "loss": sums["loss"], "kd": sums["kd"], "ce": sums["ce"], "hidden": sums["hidden"],
                        "ewc": sums["ewc"], "lr": lr,
                        "grad_norm": norm, "tokens": tokens, "tok_per_s": tokens / dt if dt > 0 else 0.0,
                        "elapsed_s": time.perf_counter() - t0})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.3f}", tok_s=f"{log[-1]['tok_per_s']:.0f}")
            elif time.perf_counter() - last_line >= LOG_EVERY_S or step + 1 == config.steps:
                # no terminal for a bar (a CI log, a redirect): a line now and then, so minutes of training
                # are not silent
                last_line = time.perf_counter()
                status(f"distill: step {step + 1} of {config.steps}, loss {sums['loss']:.3f}, "
                       f"{log[-1]['elapsed_s']:.0f} s")
            if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < config.steps:
                _save_checkpoint(ckpt_root, step + 1, model, optimizer, scheduler, log, config)
    finally:
        if bar is not None:
            bar.close()
    return log


# ---- continual updates ---------------------------------------------------------------------

def _with_replay(new: list[Record], previous: dict, config: DistillConfig, vocab: int, adapter_dir: Path) -> tuple[list[Record], int]:
    """The new records and `replay_ratio` old ones per new record, drawn (seeded) from the training
    split the adapter was trained on, shuffled together."""
    import random

    old_path = Path(previous.get("train_data") or "")
    if not old_path.is_file():
        raise EdgeftError(f"--replay needs the adapter's old training split, and {old_path or 'none'} is not there",
                          file=adapter_dir / ADAPTER_META, place="train_data")
    old = read_records(old_path, vocab_size=vocab, max_length=config.max_length)
    rng = random.Random(config.seed)
    k = min(len(old), round(config.replay_ratio * len(new)))
    mixed = list(new) + rng.sample(old, k)
    rng.shuffle(mixed)
    return mixed, k


def _ewc_penalty(model, adapter_dir: Path, lam: float) -> "Callable[[], torch.Tensor]":
    """λ·ΣF(θ−θ*)² over the loaded adapter's parameters, F and θ* as stored when it was trained."""
    fisher, anchor = ewc.load(adapter_dir)
    params = _trainable(model)
    missing = sorted(set(fisher) - set(params))
    if missing:
        raise EdgeftError(f"the stored Fisher names {len(missing)} parameters this adapter does not train "
                          f"(first: {missing[0]})", file=adapter_dir / ewc.FISHER_FILE)
    return lambda: ewc.penalty(params, anchor, fisher, lam)


def _fisher(model, records: Sequence[Record], pad_id: int) -> dict[str, "torch.Tensor"]:
    """The diagonal Fisher of the trainable parameters on `records`, one record per backward pass: the
    loss is the record's mean NLL of its target tokens, as the model now predicts them."""
    import torch

    def loss_of(record: Record):
        def run() -> "torch.Tensor":
            batch = collate([record], pad_id)
            logits, _ = target_logits(model, batch)
            return torch.nn.functional.cross_entropy(logits.float(), batch["targets"][batch["targets"] != IGNORE])
        return run

    model.eval()  # no dropout in the estimate
    try:
        return ewc.fisher_diagonal(_trainable(model), (loss_of(r) for r in records))
    finally:
        model.train()


# ---- the run -------------------------------------------------------------------------------

@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the block's wall time under `key` (the phases distill.json's `timings` splits)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = time.perf_counter() - t


def run(teacher: str, data, out_dir: Path, config: DistillConfig = DistillConfig(), *, resume: bool = False,
        cache_dir: Path | None = None) -> Path:
    """Distill `teacher` into a student on `data` (anything with .train/.eval JSONL paths);
    returns the PEFT adapter folder, out_dir/adapter. Also writes out_dir/student(.json),
    distill.json (config, eval before/after, training summary), train_log.csv, eval.csv, loss.png."""
    import torch

    from edgeft.distill import qlora

    config.validate()
    mute_import_noise()
    if not progress_enabled():  # quiet runs: no loading/saving bars from transformers either
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tsrc = models.resolve(teacher)
    tch = _Teacher(source=tsrc, hash=_source_hash(tsrc), tokenizer=models.load_tokenizer(tsrc),
                   role=" (to score against: training is on the targets alone)" if config.alpha == 0 and config.hidden_weight == 0 else "")
    pad_id = _pad_id(tch.tokenizer)
    timings: dict[str, float] = {}  # seconds per phase, in distill.json
    with _timed(timings, "teacher_load_s"):
        vocab = tch.model().config.vocab_size
    train_recs = read_records(Path(data.train), vocab_size=vocab, max_length=config.max_length)
    eval_recs = read_records(Path(data.eval), vocab_size=vocab, max_length=config.max_length)
    if config.max_eval_records:
        eval_recs = eval_recs[: config.max_eval_records]
    previous = read_adapter_meta(Path(config.continue_from)) if config.continue_from else None
    replayed = 0
    if config.replay_ratio > 0:
        train_recs, replayed = _with_replay(train_recs, previous, config, vocab, Path(config.continue_from))

    with _timed(timings, "student_s"):
        build_config = dataclasses.replace(config, student=previous["student_dir"]) if previous else config
        student_dir, info = build_student(tch, build_config, out_dir, train_recs, pad_id)
    own = None
    if config.own_answer_tokens:
        with _timed(timings, "own_answers_s"):
            own = _own_answers(student_dir, tch.tokenizer, train_recs, pad_id, config, out_dir)
        train_recs = list(train_recs) + own.records
    cache, hit = None, None
    if config.use_teacher_cache and config.alpha > 0:
        with _timed(timings, "teacher_cache_s"):
            cache, hit = teacher_cache.get_or_build(Path(cache_dir or out_dir / "teacher-cache"), tch.hash, tch.model, train_recs,
                                                    config.top_k, pad_id, config.eval_batch_size)
        status(f"teacher cache: {'reused' if hit else 'built'} ({cache.ids.shape[0]} target tokens, top {cache.k})")
    with _timed(timings, "teacher_eval_s"):
        t_eval = evaluate(tch.model(), eval_recs, pad_id, config.eval_batch_size)
    if (config.use_teacher_cache or config.alpha == 0) and config.hidden_weight == 0:
        tch.release()  # the teacher is not needed again: free its memory for training

    torch.manual_seed(config.seed)
    with _timed(timings, "base_s"):
        if previous is not None:  # the adapter's own base, quantized as it was trained
            engine = nf4_engine(previous)
        else:
            engine = qlora.resolve_engine(config.nf4_engine) if config.quantize_base else None
        if engine is not None:
            status(f"NF4 base through {engine}")
        base = qlora.load_base(student_dir, quantize=True, engine=engine) if engine else qlora.load_base(student_dir, quantize=False)
        if previous is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, str(config.continue_from), is_trainable=True)
        else:
            model = qlora.add_lora(base, config)
            if config.method == "prefix" and config.prefix_init == "text":
                qlora.init_prefix(model, train_recs[0].input_ids)
    penalty = _ewc_penalty(model, Path(config.continue_from), config.ewc_lambda) if config.ewc_lambda > 0 else None
    with _timed(timings, "eval_before_s"):
        before = evaluate(model, eval_recs, pad_id, config.eval_batch_size, t_eval.top1)
    status(f"before: teacher ppl {t_eval.perplexity:.2f}; student ppl {before.perplexity:.2f}, top-1 agreement {before.agreement:.1%}")

    live = not config.use_teacher_cache or config.hidden_weight > 0
    if config.hidden_weight > 0 and info.kept_layers is None:
        raise TrainingError("--hidden-weight needs a student pruned from the teacher (its layer map), not --student")
    with _timed(timings, "train_s"):
        log = train(model, train_recs, cache, tch if live else None, pad_id, config, out_dir / "checkpoints", resume,
                    layer_map=info.stands_for or info.kept_layers, penalty=penalty)
    with _timed(timings, "eval_after_s"):
        after = evaluate(model, eval_recs, pad_id, config.eval_batch_size, t_eval.top1)
    status(f"after:  student ppl {after.perplexity:.2f}, top-1 agreement {after.agreement:.1%}")

    fisher = None
    if config.fisher_records:
        with _timed(timings, "fisher_s"):
            fisher = _fisher(model, train_recs[: config.fisher_records], pad_id)
    adapter_dir = out_dir / "adapter"
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp)
        write_json(tmp / ADAPTER_META, {"student_dir": str(Path(student_dir).resolve()), "quantized_base": engine is not None,
                                        "nf4_engine": engine, "teacher": tsrc.label, "config": config.to_dict(),
                                        "train_data": str(Path(data.train).resolve()), "continued_from": config.continue_from})
        if fisher is not None:
            ewc.save(tmp, fisher, _trainable(model), records=min(config.fisher_records, len(train_recs)))
    evals = {"teacher": t_eval.to_dict(), "student_before": before.to_dict(), "student_after": after.to_dict()}
    write_csv(out_dir / "train_log.csv", log)
    write_csv(out_dir / "eval.csv", [{"model": k, **v} for k, v in evals.items()])
    plot_curve(out_dir / "loss.png", log, evals)
    train_tokens = sum(r["tokens"] for r in log)
    write_json(out_dir / "distill.json", {
        "teacher": tsrc.label, "student": info.to_dict() | {"path": str(student_dir)}, "adapter": str(adapter_dir),
        "config": config.to_dict(), "nf4_engine": engine, "eval": evals, "train_records": len(train_recs), "eval_records": len(eval_recs),
        "teacher_cache_hit": hit, "timings": timings, "train_tokens": train_tokens,
        "own_answers": ({"file": OWN_ANSWERS_FILE, "records": len(own.records), "answer_tokens": own.tokens, "ended": own.ended,
                         "max_new_tokens": config.own_answer_tokens} if own is not None else None),
        "continual": {"continued_from": config.continue_from, "ewc_lambda": config.ewc_lambda, "replayed_records": replayed,
                      "fisher_records": min(config.fisher_records, len(train_recs)) if fisher is not None else 0},
        "train_tok_per_s": train_tokens / timings["train_s"] if log and timings["train_s"] > 0 else None,
        "final_loss": log[-1]["loss"] if log else None,
    })
    if (out_dir / "checkpoints").exists():
        shutil.rmtree(out_dir / "checkpoints")  # the finished adapter supersedes them
    return adapter_dir
