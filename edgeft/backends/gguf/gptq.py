"""q5_0 rounding that carries each column's error to the columns not yet rounded (GPTQ).

Why: ggml rounds every weight of a block to its nearest grid point (weighed by importance, where an
importance matrix is given), independently of the others. The error a row's rounding adds to the
layer's output is (w - q) x; with the inputs' second moments H = E[x xᵀ] known, the error of one
column can be partly cancelled by moving the columns still to be rounded, in proportion to how their
inputs correlate with its input (Frantar et al., "GPTQ", 2022). Columns are taken in order, in
ggml's blocks of 32: each block's scale is set from the weights as they stand when the block starts,
as ggml sets it, then its 32 columns are rounded one by one, each error spread over the later ones.

The bytes are q5_0's own (one fp16 scale, 16 bytes of low nibbles, 32 high bits per 32 weights), so
the file's layout and size are unchanged; `q5_0_bytes` of a plain rounding equals ggml's, which a
test holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BLOCK = 32  # weights per q5_0 block
DAMP = 0.01  # added to H's diagonal, as a share of its mean: keeps the inverse finite where inputs are nearly collinear


def q5_0_scales(w: "np.ndarray") -> "np.ndarray":
    """Each row's block scale as ggml sets it: the signed weight of largest magnitude maps to -16."""
    import numpy as np

    at = np.abs(w).argmax(axis=1)
    return w[np.arange(w.shape[0]), at] / -16.0


def q5_0_round(w: "np.ndarray", d: "np.ndarray") -> "np.ndarray":
    """Integer codes 0..31 of the column(s) `w` at per-row scales `d` (fp32), rounded as ggml rounds."""
    import numpy as np

    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
    x = (w.astype(np.float32) * (inv if w.ndim == 1 else inv[:, None])).astype(np.float32)
    return np.minimum(31, np.trunc(x + np.float32(16.5))).astype(np.int8).astype(np.int64)


def q5_0_bytes(codes: "np.ndarray", d: "np.ndarray") -> bytes:
    """The q5_0 blocks of a [rows, n] matrix of codes with scales d [rows, n / 32], row-major."""
    import numpy as np

    rows, n = codes.shape
    nb = n // BLOCK
    c = codes.reshape(rows, nb, BLOCK).astype(np.uint32)
    out = np.zeros((rows, nb, 22), dtype=np.uint8)
    out[:, :, 0:2] = d.astype(np.float16).reshape(rows, nb, 1).view(np.uint8)
    high = ((c >> 4) & 1) << np.arange(BLOCK, dtype=np.uint32)
    out[:, :, 2:6] = high.sum(axis=2, dtype=np.uint32).astype("<u4").reshape(rows, nb, 1).view(np.uint8)
    out[:, :, 6:22] = ((c[:, :, :16] & 0xF) | ((c[:, :, 16:] & 0xF) << 4)).astype(np.uint8)
    return out.tobytes()


def gptq_q5_0(w: "np.ndarray", h: "np.ndarray", damp: float = DAMP) -> tuple["np.ndarray", "np.ndarray"]:
    """(codes [rows, n], scales [rows, n / 32]) of `w` [rows, n] rounded to q5_0 with its errors carried
    forward under the input second moments `h` [n, n]."""
    import numpy as np
    import torch

    rows, n = w.shape
    if n % BLOCK:
        raise ValueError(f"q5_0 needs rows of a multiple of {BLOCK} weights, got {n}")
    W = torch.tensor(w, dtype=torch.float64)
    H = torch.tensor(h, dtype=torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += torch.eye(n, dtype=torch.float64) * damp * torch.diagonal(H).mean()
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = np.zeros((rows, n), dtype=np.int64)
    scales = np.zeros((rows, n // BLOCK), dtype=np.float32)
    for b0 in range(0, n, BLOCK):
        b1 = b0 + BLOCK
        block = W[:, b0:b1].clone()
        d = q5_0_scales(block.numpy().astype(np.float32)).astype(np.float32)
        scales[:, b0 // BLOCK] = d
        dq = torch.tensor(d.astype(np.float16).astype(np.float64))
        err = torch.zeros(rows, BLOCK, dtype=torch.float64)
        for j in range(BLOCK):
            col = block[:, j]
            q = q5_0_round(col.numpy().astype(np.float32), d)
            codes[:, b0 + j] = q
            e = (col - torch.tensor(q - 16, dtype=torch.float64) * dq) / U[b0 + j, b0 + j]
            block[:, j:] -= e[:, None] * U[b0 + j, b0 + j:b1][None, :]
            err[:, j] = e
        W[:, b1:] -= err @ U[b0:b1, b1:]
    return codes, scales
