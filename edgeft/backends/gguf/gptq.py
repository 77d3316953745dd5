"""Rounding that carries each column's error to the columns not yet rounded (GPTQ), in ggml's own bytes.

Why: ggml rounds every weight of a block to its nearest grid point (weighed by importance, where an
importance matrix is given), independently of the others. The error a row's rounding adds to the
layer's output is (w - q) x; with the inputs' second moments H = E[x xᵀ] known, the error of one
column can be partly cancelled by moving the columns still to be rounded, in proportion to how their
inputs correlate with its input (Frantar et al., "GPTQ", 2022).

How: columns are taken in order, one ggml block at a time (32 columns for q5_0 and q5_1, a 256-column
super-block for q4_K). At the start of each block ggml itself quantizes the block's columns as they
stand after the earlier blocks' corrections, weighing them by the importance vector; that fixes the
block's scales (and mins), chosen by ggml's own search (for q5_0 and q5_1 its weighing then reads the
block's variance rather than the whole row's, as it would for a row one block long). The columns are then rounded one by one on
that grid, each error spread over the block's later columns and, when the block is done, over all
later ones. Only the codes are ours: the file's layout, types, scales' search and size are ggml's.
With uncorrelated inputs this is ggml's scales with every weight on its nearest grid point, which a
test holds.

Tensors of other types (q5_K, q6_K, q8_0, the float types) keep ggml's rounding.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    import numpy as np

DAMP = 0.01  # added to H's diagonal, as a share of its mean: keeps the inverse finite where inputs are nearly collinear


@dataclass(frozen=True)
class Codec:
    """One ggml block type as GPTQ needs it: a weight is `a * code - b` with `a`, `b` fixed per block
    (per sub-block for K-quants) by ggml's scales, and codes 0..qmax."""

    block: int  # weights per block
    nbytes: int  # bytes per block
    head: int  # leading bytes that hold the scales (and mins), which ggml chooses
    qmax: int
    grid: Callable[["np.ndarray"], tuple["np.ndarray", "np.ndarray"]]  # blocks [rows, nbytes] -> a, b [rows, block]
    codes: Callable[["np.ndarray"], "np.ndarray"]  # blocks -> codes [rows, block]
    pack: Callable[["np.ndarray", "np.ndarray"], None]  # writes codes [rows, block] into blocks, in place


def _f16(blocks: "np.ndarray", at: int) -> "np.ndarray":
    import numpy as np

    return np.ascontiguousarray(blocks[:, at:at + 2]).view(np.float16)[:, 0].astype(np.float32)


def _five_bit_codes(blocks: "np.ndarray", qh: int, qs: int) -> "np.ndarray":
    """q5_0/q5_1 codes: the low nibbles of weights j and j + 16 share byte qs + j, the fifth bits a u32 at qh."""
    import numpy as np

    high = np.ascontiguousarray(blocks[:, qh:qh + 4]).view("<u4")[:, 0:1] >> np.arange(32, dtype=np.uint32) & 1
    low = blocks[:, qs:qs + 16]
    return (np.concatenate([low & 0xF, low >> 4], axis=1) | (high << 4)).astype(np.int64)


def _five_bit_pack(blocks: "np.ndarray", codes: "np.ndarray", qh: int, qs: int) -> None:
    import numpy as np

    c = codes.astype(np.uint32)
    bits = (((c >> 4) & 1) << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    blocks[:, qh:qh + 4] = bits.astype("<u4").reshape(-1, 1).view(np.uint8)
    blocks[:, qs:qs + 16] = ((c[:, :16] & 0xF) | ((c[:, 16:] & 0xF) << 4)).astype(np.uint8)


def _q5_0_grid(blocks):  # d (f16), qh, qs: w = d * (code - 16)
    import numpy as np

    d = np.repeat(_f16(blocks, 0)[:, None], 32, axis=1)
    return d, 16 * d


def _q5_1_grid(blocks):  # d, m (f16), qh, qs: w = d * code + m
    import numpy as np

    return np.repeat(_f16(blocks, 0)[:, None], 32, axis=1), np.repeat(-_f16(blocks, 2)[:, None], 32, axis=1)


def _k4_scales(blocks: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """The 8 six-bit scales and mins of each q4_K super-block, unpacked from its 12 bytes at offset 4."""
    import numpy as np

    s = blocks[:, 4:16].astype(np.int64)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def _q4_k_grid(blocks):  # d, dmin (f16), scales[12], qs[128]: sub-block s of 32: w = d*sc_s*code - dmin*m_s
    import numpy as np

    sc, mn = _k4_scales(blocks)
    a = (_f16(blocks, 0)[:, None] * sc.astype(np.float32)).astype(np.float32)
    b = (_f16(blocks, 2)[:, None] * mn.astype(np.float32)).astype(np.float32)
    return np.repeat(a, 32, axis=1), np.repeat(b, 32, axis=1)


def _q4_k_codes(blocks):
    """Weights 64j + l and 64j + 32 + l share byte 16 + 32j + l, low nibble and high."""
    import numpy as np

    q = blocks[:, 16:144].reshape(-1, 4, 32)
    return np.stack([q & 0xF, q >> 4], axis=2).reshape(-1, 256).astype(np.int64)


def _q4_k_pack(blocks, codes):
    import numpy as np

    c = codes.reshape(-1, 4, 2, 32).astype(np.uint8)
    blocks[:, 16:144] = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128)


# by ggml type id
CODECS = {
    6: Codec(32, 22, 2, 31, _q5_0_grid, lambda b: _five_bit_codes(b, 2, 6), lambda b, c: _five_bit_pack(b, c, 2, 6)),
    7: Codec(32, 24, 4, 31, _q5_1_grid, lambda b: _five_bit_codes(b, 4, 8), lambda b, c: _five_bit_pack(b, c, 4, 8)),
    12: Codec(256, 144, 16, 15, _q4_k_grid, _q4_k_codes, _q4_k_pack),
}


def _ggml_blocks(quantize_chunk, ggml_type: int, codec: Codec, w: "np.ndarray", weights: "np.ndarray | None") -> "np.ndarray":
    """ggml's quantization of `w` [rows, codec.block]: [rows, nbytes] uint8."""
    import numpy as np

    from edgeft.backends.gguf.imatrix import ggml_round

    out = np.empty((w.shape[0], codec.nbytes), dtype=np.uint8)
    written = ggml_round(quantize_chunk, ggml_type, w, out, weights)
    if written != out.size:
        raise RuntimeError(f"ggml wrote {written} bytes for a block of {w.shape[0]} rows, expected {out.size}")
    return out


def _inverse_factor(H, damp: float):
    """(the upper Cholesky factor of H⁻¹, the dead columns) in float64 torch: a column no input reaches
    gets 1 on H's diagonal, and H is damped by `damp` times its live diagonal's mean. Where H is too
    near singular for that, the damping grows tenfold up to three times before it gives up (ValueError)."""
    import torch

    dead = torch.diagonal(H) == 0
    if not torch.isfinite(H).all() or dead.all():
        raise ValueError("second moments that are not finite, or all zero")
    mean = torch.diagonal(H)[~dead].mean()
    H[dead, dead] = 1.0
    for attempt in range(4):
        try:
            damped = H + torch.eye(len(H), dtype=H.dtype) * damp * 10 ** attempt * mean
            return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True), dead
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("second moments too near singular even damped a thousandfold more")


def gptq(w: "np.ndarray", h: "np.ndarray", ggml_type: int, weights: "np.ndarray | None" = None, *,
         damp: float = DAMP, quantize_chunk=None) -> "np.ndarray":
    """`w` [rows, n] as ggml type `ggml_type`'s blocks [rows, n / block, nbytes] (row-major, as a GGUF file
    holds them), rounded with errors carried forward under the input second moments `h` [n, n]; each
    block's scales chosen by ggml, weighing the columns by `weights` (the importance vector) when given."""
    import numpy as np
    import torch

    from edgeft.backends.gguf.imatrix import _ggml

    codec = CODECS[ggml_type]
    quantize_chunk = quantize_chunk or _ggml()
    rows, n = w.shape
    if n % codec.block:
        raise ValueError(f"ggml type {ggml_type} needs rows of a multiple of {codec.block} weights, got {n}")
    W = torch.tensor(w, dtype=torch.float64)
    U, dead = _inverse_factor(torch.tensor(h, dtype=torch.float64), damp)
    W[:, dead] = 0.0  # columns no input reaches: their weights never act
    out = np.empty((rows, n // codec.block, codec.nbytes), dtype=np.uint8)
    W, U = W.numpy(), U.numpy()  # the column loop below is many small steps: numpy's are the cheaper
    for i, b0 in enumerate(range(0, n, codec.block)):
        b1 = b0 + codec.block
        block = W[:, b0:b1].copy()
        blocks = _ggml_blocks(quantize_chunk, ggml_type, codec, block, None if weights is None else weights[b0:b1])
        a, b = (v.astype(np.float64) for v in codec.grid(blocks))
        inv = np.divide(1.0, a, out=np.zeros_like(a), where=a != 0)
        codes = np.zeros((rows, codec.block), dtype=np.int64)
        err = np.empty((rows, codec.block))
        for j in range(codec.block):
            col = block[:, j]
            q = np.clip(np.floor((col + b[:, j]) * inv[:, j] + 0.5), 0, codec.qmax)  # 0 where the block is all zero
            codes[:, j] = q
            e = (col - (a[:, j] * q - b[:, j])) / U[b0 + j, b0 + j]
            block[:, j:] -= np.outer(e, U[b0 + j, b0 + j:b1])
            err[:, j] = e
        W[:, b1:] -= err @ U[b0:b1, b1:]
        codec.pack(blocks, codes)
        out[:, i] = blocks
    return out


def rewrite(quantized: Path, unquantized: Path, moments: Path, model_dir: Path,
            importance: "Mapping[str, np.ndarray] | None" = None, threads: int = 0) -> dict:
    """Round again, in place in `quantized`, each of its tensors of a type GPTQ writes (CODECS) whose
    input second moments `moments` holds (`edgeft.importance.collect(full=True)`'s file of the HF model at
    `model_dir`), from the same tensor of `unquantized` (f32 or f16). Returns what it did: the tensors
    rewritten by type, those left to ggml, seconds. Native code (ggml picks the scales): run it in a child."""
    import mmap

    import numpy as np
    from gguf.constants import GGMLQuantizationType
    from safetensors import safe_open

    from edgeft.backends.gguf.header import read_header
    from edgeft.backends.gguf.imatrix import _ggml, float_rows, float_source, gguf_names
    from edgeft.errors import ArtifactError
    from edgeft.importance import shared_moments

    started = time.perf_counter()
    quantize_chunk = _ggml()
    q_head, f_head = read_header(quantized), read_header(unquantized)
    sources = {t.name: t for t in f_head.tensors}
    f_map = np.memmap(unquantized, mode="r", dtype=np.uint8)
    importance = importance or {}
    done: dict[str, int] = {}
    left: dict[str, int] = {}
    with safe_open(str(moments), framework="numpy") as hs:
        stored = shared_moments(hs.metadata(), hs.keys())  # every weight's name -> the name its moments are stored under
        by_gguf = {gguf: stored[hf] for gguf, hf in gguf_names(model_dir, stored).items()}
        # Tensors that multiply the same input (q, k and v; gate and up) share their moments, so they are
        # rounded as one matrix of stacked rows: one inverse, one pass over the columns, the same bytes.
        groups: dict[tuple, list] = {}
        for t in q_head.tensors:
            if t.name not in by_gguf or t.ggml_type in (0, 1):
                continue
            kind = t.ggml_type
            name = GGMLQuantizationType(kind).name.lower()
            if kind not in CODECS:
                left[name] = left.get(name, 0) + 1
                continue
            src = float_source(sources, t, unquantized)
            h_shape = tuple(hs.get_slice(by_gguf[t.name]).get_shape())
            if h_shape != (src.shape[0],) * 2:
                raise ArtifactError(f"the second moments of {t.name} are {h_shape}, the tensor has {src.shape[0]} columns",
                                    file=moments)
            groups.setdefault((kind, by_gguf[t.name]), []).append((t, src, name))
        with open(quantized, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as out:
            def one(group) -> bool:
                (kind, key), members = group
                parts = [float_rows(f_head, f_map, src) for _, src, _ in members]
                try:
                    blocks = gptq(np.concatenate(parts), hs.get_tensor(key), kind, importance.get(members[0][0].name),
                                  quantize_chunk=quantize_chunk)
                except ValueError:  # moments GPTQ cannot invert: ggml's rounding, already in the file, stays
                    return False
                row = 0
                for (t, _, name), w in zip(members, parts):
                    data = blocks[row:row + len(w)].tobytes()
                    row += len(w)
                    if len(data) != t.n_bytes():
                        raise ArtifactError(f"GPTQ wrote {len(data)} bytes for {t.name}, the file holds {t.n_bytes()}", file=quantized)
                    at = q_head.data_start + t.offset
                    out[at:at + len(data)] = data
                return True

            # numpy's array steps and ggml's calls let go of the GIL, so groups round in parallel
            with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
                rounded = list(pool.map(one, groups.items()))
            out.flush()
        for ok, members in zip(rounded, groups.values()):
            for _, _, name in members:
                key, tally = (name, done) if ok else (f"{name} (moments not invertible)", left)
                tally[key] = tally.get(key, 0) + 1
    return {"rewritten": done, "left_to_ggml": left, "seconds": round(time.perf_counter() - started, 2)}


def done_file(folder: Path, quant: str) -> Path:
    """Where a build records what GPTQ rewrote at level `quant`: beside the moments it rounded under."""
    return Path(folder) / f"gptq-{quant}.json"


def done_note(folder: Path, quant: str) -> str:
    """One line for the manifest: what GPTQ rewrote at `quant` (`rewrite`'s counts), or why nothing."""
    import json

    from edgeft.importance import MOMENTS

    try:
        done = json.loads(done_file(folder, quant).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "GPTQ asked for but not run (no record of it at this level)"
    rewritten = ", ".join(f"{n} {kind}" for kind, n in done["rewritten"].items())
    if not rewritten:
        return f"GPTQ rewrote nothing: no tensor at {quant} is of a type it writes (q5_0, q5_1, q4_K)"
    left = ", ".join(f"{n} {kind}" for kind, n in done["left_to_ggml"].items())
    return (f"then {rewritten} tensors rounded again by GPTQ under {Path(folder).name}/{MOMENTS} ({done['seconds']:.0f} s)"
            + (f"; {left} kept ggml's rounding" if left else ""))
