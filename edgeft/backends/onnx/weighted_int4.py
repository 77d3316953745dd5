"""The builder's symmetric int4 weights rounded again, weighing each column by its importance.

Why: onnxruntime-genai's builder rounds every block of 32 weights to nearest, its scale set by the
block's largest weight, and every column alike. The error a column adds to the layer's output
grows with how large that column's inputs run (`edgeft.importance`), so this picks, per block, the
scale whose rounding minimises the importance-weighted squared error, at the same bytes and the
same graph. It is the ONNX half of what `backends/gguf/imatrix.py` does for llama.cpp's file.

The layout (MatMulNBits and GatherBlockQuantized, 4 bits, no zero points): weight row n, block b
holds `block` values q in 0..15 packed two per byte, low nibble first, meaning scale[n, b] * (q - 8).
Before any tensor is replaced, the builder's own bytes are decoded and compared with the HF weights
they came from: a tensor whose decoding does not match (a name mapped wrongly, a layout changed) is
left as the builder wrote it and counted, never rewritten from the wrong weights.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

QMIN, QMAX, ZERO = -8, 7, 8
# Divisors of the block's signed largest weight tried as the scale. +8 is the builder's own
# round-to-nearest (the largest magnitude over 8, so a largest positive weight clips to +7), so no
# block ends worse than the builder left it; -8 puts the largest weight on -8 exactly; the others
# trade that weight's error for a finer grid everywhere else. Each is then refitted to its rounding.
DIVISORS = (8.0, -8.0, -7.5, -7.0, -6.5, -6.0, -8.5, -9.0, 7.5, 7.0, 6.5)
CHUNK = 1 << 22  # weights rounded per numpy pass: bounds the memory of the candidate search
_NAME = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?P<part>attn|mlp)\.(?P<proj>\w+)\.MatMul\.weight_Q4$")


def round_blocks(x: "np.ndarray", weight: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """(q in QMIN..QMAX as int8, scale per block) for blocks `x` [M, B] minimising sum(weight * (x - s q)^2)
    per block; `weight` [M, B] or [B] is positive."""
    import numpy as np

    x = x.astype(np.float32)
    w = np.broadcast_to(weight, x.shape).astype(np.float32)
    big = np.take_along_axis(x, np.abs(x).argmax(1)[:, None], 1)[:, 0]  # the signed largest weight
    best_err = np.full(x.shape[0], np.inf, np.float32)
    best_q = np.zeros(x.shape, np.int8)
    best_s = np.zeros(x.shape[0], np.float32)

    def keep(q: "np.ndarray", scale: "np.ndarray") -> "np.ndarray":
        """Refit the scale to the rounding `q` (weighted least squares: never worse than `scale`), keep
        the blocks it improves; return the refitted scale."""
        wq = w * q
        den = (wq * q).sum(1)
        fitted = np.where(den > 0, (wq * x).sum(1) / np.where(den > 0, den, 1.0), scale).astype(np.float32)
        err = (w * (x - fitted[:, None] * q) ** 2).sum(1)
        better = err < best_err
        best_err[better], best_s[better], best_q[better] = err[better], fitted[better], q[better].astype(np.int8)
        return fitted

    for divisor in DIVISORS:
        scale = (big / divisor if divisor < 0 else np.abs(big) / divisor).astype(np.float32)
        safe = np.where(scale == 0, 1.0, scale)
        fitted = keep(np.clip(np.rint(x / safe[:, None]), QMIN, QMAX), scale)
        safe = np.where(fitted == 0, 1.0, fitted)  # the refitted scale can round some weights the other way
        keep(np.clip(np.rint(x / safe[:, None]), QMIN, QMAX), fitted)
    return best_q, best_s


def pack(q: "np.ndarray", rows: int, blocks: int, block: int) -> "np.ndarray":
    """int8 q [rows * blocks, block] in QMIN..QMAX -> uint8 [rows, blocks, block // 2], low nibble first."""
    import numpy as np

    u = (q.astype(np.int16) + ZERO).astype(np.uint8).reshape(rows, blocks, block)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def unpack(packed: "np.ndarray", scales: "np.ndarray", k: int) -> "np.ndarray":
    """The weights [rows, k] that packed uint8 [rows, blocks, block // 2] and scales [rows, blocks] mean."""
    import numpy as np

    rows, blocks, half = packed.shape
    q = np.empty((rows, blocks, half * 2), np.float32)
    q[..., 0::2] = packed & 0x0F
    q[..., 1::2] = packed >> 4
    return ((q - ZERO) * scales.reshape(rows, blocks, 1)).reshape(rows, blocks * half * 2)[:, :k]


def quantize(w: "np.ndarray", column_weight: "np.ndarray", block: int) -> tuple["np.ndarray", "np.ndarray"]:
    """(packed uint8 [N, blocks, block // 2], scales float32 [N, blocks]) of weights [N, K] whose columns weigh
    `column_weight` [K]; K is padded with zeros to whole blocks, as the builder pads it. Rows go through
    in chunks, so a large head never has more than CHUNK weights in the search at once."""
    import numpy as np

    n, k = w.shape
    blocks = -(-k // block)
    cw = np.zeros(blocks * block, np.float32)
    cw[:k] = np.maximum(column_weight, 0) + 1e-12 * max(float(np.max(column_weight)), 1e-30)
    cw = cw.reshape(blocks, block)
    packed = np.empty((n, blocks, block // 2), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    rows = max(CHUNK // (blocks * block), 1)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        x = np.zeros((r1 - r0, blocks * block), np.float32)
        x[:, :k] = w[r0:r1]
        q, s = round_blocks(x.reshape(-1, block), np.tile(cw, (r1 - r0, 1)))
        packed[r0:r1], scales[r0:r1] = pack(q, r1 - r0, blocks, block), s.reshape(r1 - r0, blocks)
    return packed, scales


def hf_weights(name: str, read: Callable[[str], "np.ndarray | None"], tied_head: bool) -> tuple["np.ndarray", str] | None:
    """(the HF weight [N, K] an ONNX int4 initializer was made from, the HF name its importance is under)."""
    import numpy as np

    if name == "lm_head.MatMul.weight_Q4":
        head = read("lm_head.weight")
        if head is None or tied_head:
            head = read("model.embed_tokens.weight")
        return (head, "lm_head.weight") if head is not None else None
    m = _NAME.match(name)
    if not m:
        return None
    layer, part, proj = m["layer"], m["part"], m["proj"]
    stem = f"model.layers.{layer}.{'self_attn' if part == 'attn' else 'mlp'}"
    pieces = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}.get(proj, (proj,))
    whole = read(f"{stem}.{proj}.weight")
    if whole is not None:
        return whole, f"{stem}.{proj}.weight"
    if proj in ("gate_proj", "up_proj"):  # the HF model fuses them (Phi-3), the graph does not: gate rows first
        fused = read(f"{stem}.gate_up_proj.weight")
        if fused is not None:
            half = fused.shape[0] // 2
            return (fused[:half] if proj == "gate_proj" else fused[half:]), f"{stem}.gate_up_proj.weight"
    parts = [read(f"{stem}.{p}.weight") for p in pieces]
    if any(p is None for p in parts):
        return None
    return np.concatenate(parts, 0), f"{stem}.{pieces[0]}.weight"  # the pieces share one input


def requantize(model_path: Path, hf_dir: Path, importance_file: Path) -> dict[str, int]:
    """Round every 4-bit symmetric initializer of `model_path` (a builder folder's model.onnx, external data
    beside it) again with the importance in `importance_file`, in place. Returns counts: rewritten,
    left (decoding did not match the HF weights, or no HF weight or importance found)."""
    import json

    import numpy as np
    import onnx
    from onnx import numpy_helper
    from safetensors import safe_open

    from edgeft import importance

    model_path = Path(model_path)
    folder = model_path.parent
    graph_model = onnx.load(str(model_path), load_external_data=True)
    inits = {i.name: i for i in graph_model.graph.initializer}
    means = importance.load(importance_file)
    config = json.loads((hf_dir / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", False))
    handles = [safe_open(str(p), framework="pt") for p in sorted(hf_dir.glob("*.safetensors"))]

    def read(name: str):
        for h in handles:
            if name in h.keys():
                return h.get_tensor(name).float().numpy()
        return None

    counts = {"rewritten": 0, "left": 0}
    for node in graph_model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "MatMulNBits" or attrs.get("bits") != 4 or (len(node.input) > 3 and node.input[3]):
            continue  # int8, or asymmetric (zero points): not this rounding
        q_name, s_name = node.input[1], node.input[2]
        if q_name not in inits or s_name not in inits:
            continue
        block, k = int(attrs["block_size"]), int(attrs["K"])
        found = hf_weights(q_name, read, tied)
        weights = means.get(found[1]) if found else None
        if found is None or weights is None:
            counts["left"] += 1
            continue
        w = found[0]
        packed, stored = numpy_helper.to_array(inits[q_name]), numpy_helper.to_array(inits[s_name])
        scales = stored.astype(np.float32).reshape(packed.shape[0], packed.shape[1])
        builder = unpack(packed, scales, k)
        # the builder's decoding must be the HF weights to within its own rounding: half a step, or one
        # where it clipped a block's largest positive weight to +7 (its scale is the largest magnitude / 8)
        step = np.abs(scales).repeat(block, 1)[:, :k]
        if builder.shape != w.shape or np.any(np.abs(builder - w) > step * 1.001 + 1e-7):
            counts["left"] += 1
            continue
        new_q, new_s = quantize(w, weights, block)
        inits[q_name].CopyFrom(numpy_helper.from_array(new_q.reshape(packed.shape), q_name))
        inits[s_name].CopyFrom(numpy_helper.from_array(new_s.reshape(stored.shape).astype(stored.dtype), s_name))
        counts["rewritten"] += 1
    if counts["rewritten"]:
        data_name = f"{model_path.name}.data"
        with tempfile.TemporaryDirectory(dir=folder, prefix=".requantize-") as tmp:
            onnx.save_model(graph_model, str(Path(tmp) / model_path.name), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
            for name in (model_path.name, data_name):
                mode = (folder / name).stat().st_mode if (folder / name).exists() else None
                shutil.move(str(Path(tmp) / name), str(folder / name))
                if mode is not None:
                    os.chmod(folder / name, mode)
    return counts
