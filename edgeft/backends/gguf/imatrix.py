"""llama.cpp's quantized file, its rounding redone with an importance matrix (`edgeft.importance`).

Why not llama.cpp's own path: `llama_model_quantize` takes the matrix only as a pointer to a C++
map, which ctypes cannot build. So llama.cpp quantizes as usual, choosing every tensor's type (the
level's mix), and then each quantized tensor is quantized again from the unquantized file by
ggml's own `ggml_quantize_chunk`, the function llama.cpp calls, given the importance vector of
that tensor's input columns. The type, and so the size of every tensor, is unchanged, so the new
bytes are written over the old ones in place: the header and every offset stay as llama.cpp wrote
them. Without an importance vector `ggml_quantize_chunk` gives llama.cpp's bytes exactly (a test
holds it to that), which pins the layout this relies on.
"""

from __future__ import annotations

import ctypes
import json
import mmap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from gguf.constants import GGMLQuantizationType

from edgeft.backends.gguf import UNWEIGHED
from edgeft.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np

    from edgeft.backends.gguf.header import Header, TensorInfo

# ggml type ids whose quantizer ignores an importance vector: the float types and q8_0.
_IGNORES = {int(GGMLQuantizationType[name.upper()]) for name in UNWEIGHED}


def gguf_importance(model_dir: Path, importance: Mapping[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
    """`importance` (by HF weight name) renamed to the GGUF tensors our converter writes for the
    model at `model_dir`; the output head's goes to the token table when the head is tied to it."""
    return {gguf: importance[hf] for gguf, hf in gguf_names(model_dir, importance).items()}


def gguf_names(model_dir: Path, hf_names: Iterable[str]) -> dict[str, str]:
    """The GGUF tensor our converter writes for each of `hf_names` (HF weight names of the model at
    `model_dir`, HEAD for the output head), as {GGUF name: HF name}; names with no tensor are left out."""
    from edgeft.backends.gguf.arch import family_for
    from edgeft.importance import HEAD

    family = family_for(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")), "config.json")
    out = {}
    for hf_name in hf_names:
        if hf_name == HEAD:
            out["token_embd.weight" if family.tied else "output.weight"] = hf_name
            continue
        name = family.gguf_name(hf_name)
        if name is not None:
            out[name] = hf_name
    return out


def _ggml():
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    fn = lib.ggml_quantize_chunk
    # size_t ggml_quantize_chunk(enum ggml_type, const float * src, void * dst, int64_t start,
    #                            int64_t nrows, int64_t n_per_row, const float * imatrix)
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]
    return fn


def float_source(sources: Mapping[str, "TensorInfo"], t: "TensorInfo", unquantized: Path) -> "TensorInfo":
    """The f32/f16 tensor of the unquantized file (`sources`, by name) that quantized tensor `t` was made from."""
    src = sources.get(t.name)
    if src is None or src.shape != t.shape or src.ggml_type not in (0, 1):
        raise ArtifactError(f"tensor {t.name} has no f32/f16 counterpart of shape {t.shape}", file=unquantized)
    return src


def float_rows(head: "Header", data: "np.ndarray", src: "TensorInfo") -> "np.ndarray":
    """Tensor `src` (f32 or f16) of the file mapped as `data` (bytes) with header `head`, as float32 [rows, row length]."""
    import numpy as np

    dtype = np.float32 if src.ggml_type == 0 else np.float16
    n, rows = src.shape[0], int(np.prod(src.shape[1:]))
    at = head.data_start + src.offset
    return np.asarray(data[at:at + n * rows * dtype().itemsize].view(dtype), dtype=np.float32).reshape(rows, n)


def ggml_round(quantize_chunk, ggml_type: int, x: "np.ndarray", out: "np.ndarray", weights: "np.ndarray | None" = None) -> int:
    """ggml's rounding of the rows of `x` [rows, n] to `ggml_type`, weighing the columns by `weights`
    when given, into the uint8 buffer `out` the caller sized; the bytes ggml wrote."""
    import numpy as np

    x = np.ascontiguousarray(x, dtype=np.float32)
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    return quantize_chunk(ggml_type, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                          None if w is None else w.ctypes.data)


def requantize(quantized: Path, unquantized: Path, importance: Mapping[str, "np.ndarray | None"], threads: int = 0) -> list[str]:
    """Quantize again, in place in `quantized`, each of its tensors named in `importance` whose type
    weighs one, from the same tensor of `unquantized` (f32 or f16), with that vector (None: without
    one, as llama.cpp did). Returns the names rewritten. Native code: run it in a child process."""
    import os

    import numpy as np

    from edgeft.backends.gguf.header import read_header

    quantize_chunk = _ggml()
    q_head, f_head = read_header(quantized), read_header(unquantized)
    sources = {t.name: t for t in f_head.tensors}
    jobs = []
    for t in q_head.tensors:
        if t.name not in importance or t.ggml_type in _IGNORES:
            continue
        src = float_source(sources, t, unquantized)
        weights = importance[t.name]
        if weights is not None and weights.shape != (t.shape[0],):
            raise ArtifactError(f"the importance of {t.name} has {weights.shape[0]} columns, the tensor {t.shape[0]}",
                                file=quantized)
        jobs.append((t, src, weights))

    f_map = np.memmap(unquantized, mode="r", dtype=np.uint8)
    with open(quantized, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as out:
        def one(job) -> str:
            t, src, weights = job
            buf = np.empty(t.n_bytes(), dtype=np.uint8)
            written = ggml_round(quantize_chunk, t.ggml_type, float_rows(f_head, f_map, src), buf, weights)
            if written != buf.size:
                raise ArtifactError(f"ggml wrote {written} bytes for {t.name}, the file holds {buf.size}", file=quantized)
            at = q_head.data_start + t.offset
            out[at:at + buf.size] = buf.tobytes()
            return t.name

        # ctypes lets go of the GIL during the call, so tensors quantize in parallel
        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
            done = list(pool.map(one, jobs))
        out.flush()
    return done
