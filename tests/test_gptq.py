"""q5_0 rounding with error feedback (GPTQ): ggml's own bytes for a plain rounding, and a smaller
output error than rounding to nearest when the inputs correlate."""

from __future__ import annotations

import numpy as np

from edgeft.backends.gguf.gptq import BLOCK, gptq_q5_0, q5_0_bytes, q5_0_round, q5_0_scales

ROWS, N = 48, 256


def _rtn(w):
    blocks = w.reshape(w.shape[0], -1, BLOCK)
    d = np.stack([q5_0_scales(blocks[:, b]) for b in range(blocks.shape[1])], axis=1).astype(np.float32)
    codes = np.concatenate([q5_0_round(blocks[:, b], d[:, b]) for b in range(blocks.shape[1])], axis=1)
    return codes, d


def _dequantized(codes, d):
    scale = d.astype(np.float16).astype(np.float32)
    return ((codes - 16).reshape(codes.shape[0], -1, BLOCK) * scale[:, :, None]).reshape(codes.shape)


def test_a_plain_rounding_writes_ggml_s_own_q5_0_bytes():
    from edgeft.backends.gguf.imatrix import _ggml

    w = np.random.default_rng(0).standard_normal((ROWS, N)).astype(np.float32)
    w[0, :BLOCK] = 0.0  # a block of zeros: scale 0, every code 16
    theirs = np.empty(ROWS * N // BLOCK * 22, dtype=np.uint8)
    assert _ggml()(6, w.ctypes.data, theirs.ctypes.data, 0, ROWS, N, None) == theirs.size
    assert np.frombuffer(q5_0_bytes(*_rtn(w)), dtype=np.uint8).tobytes() == theirs.tobytes()


def test_with_uncorrelated_inputs_it_rounds_to_nearest():
    w = np.random.default_rng(1).standard_normal((ROWS, N)).astype(np.float32)
    codes, d = gptq_q5_0(w, np.eye(N))
    rtn_codes, rtn_d = _rtn(w)
    assert np.array_equal(codes, rtn_codes) and np.array_equal(d, rtn_d)


def test_with_correlated_inputs_its_output_error_is_smaller_than_rounding_to_nearest():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((ROWS, N)).astype(np.float32)
    mix = np.eye(N) + 0.5 * rng.standard_normal((N, N)) / np.sqrt(N)
    x_fit, x_new = (rng.standard_normal((2048, N)) @ mix for _ in range(2))
    codes, d = gptq_q5_0(w, x_fit.T @ x_fit / len(x_fit))
    assert codes.min() >= 0 and codes.max() <= 31

    def output_error(c, s, x):
        return float(np.mean((x @ (w - _dequantized(c, s)).T) ** 2))

    ours, nearest = output_error(codes, d, x_new), output_error(*_rtn(w), x_new)
    assert ours < 0.95 * nearest, (ours, nearest)  # on inputs it was not fitted to
