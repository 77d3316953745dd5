"""Weight-only int8 and int4 for the TensorRT-ready graph, through NVIDIA ModelOpt's ONNX PTQ.

ModelOpt writes DequantizeLinear nodes on the weights (int4: blockwise, opset 21; int8: per output
channel), which TensorRT's parser turns into its low-precision GEMM kernels. Its calibration runs
the graph in onnxruntime on the CPU, so this half needs no GPU.

Facts that shape the calls (read from ModelOpt 0.47's source and measured on tiny graphs):
- `quantize_mode="int8"` is weights *and* activations (W8A8). Weight-only int8 is the int4 code
  path with every weight GEMM named in `layers_8bit`, per-channel int8 weights and no activation Q/DQ.
- int4 `rtn` writes blocked Q/DQ without a `block_size` attribute that onnxruntime refuses; `rtn_dq`
  and `awq_clip` write a loadable DQ-only graph.
- It rewrites its input file in place (shape inference), so it gets a copy.
- The head stays in the reference's precision: it is tied to the embedding table in small models,
  and it carries the most quantization error per weight.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgeft.atomic_io import atomic_dir
from edgeft.errors import ArtifactError

if TYPE_CHECKING:
    from edgeft.backends.tensorrt import TensorRTOptions

LEVELS = ("int8", "int4")


def weight_gemms(model) -> tuple[list[str], list[str]]:
    """(weight GEMMs to quantize, every other MatMul/Gemm): a weight GEMM multiplies by an initializer."""
    inits = {i.name for i in model.graph.initializer}
    weights, others = [], []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        is_weight = len(node.input) > 1 and node.input[1] in inits and "lm_head" not in node.name
        (weights if is_weight else others).append(node.name)
    return weights, others


def calibration_feed(shapes: dict, ids: list[list[int]]) -> dict:
    """Token sequences (equal length) as the graph's inputs, from an empty KV cache."""
    import numpy as np

    batch = np.asarray(ids, dtype=np.int64)
    feed = {"input_ids": batch, "position_ids": np.tile(np.arange(batch.shape[1], dtype=np.int64), (len(batch), 1))}
    empty = np.zeros((len(batch), int(shapes["kv_heads"]), 0, int(shapes["head_dim"])), dtype=np.float32)
    for name in shapes["inputs"]:
        if name.startswith("past_key_values."):
            feed[name] = empty
    return feed


def quantize(reference: Path, out_dir: Path, level: str, options: "TensorRTOptions", calibration: list[list[int]],
             *, marker: dict) -> Path:
    """`reference` (the fp32 folder) -> `out_dir` at `level`, atomically; the tokenizer files come along,
    and `marker` (what the backend reads back) is written beside them."""
    import json

    from edgeft.backends.marker import MARKER
    import onnx

    from edgeft.backends.tensorrt.export import MODEL_FILE
    from edgeft.backends.tensorrt.runner import read_shapes

    if level not in LEVELS:
        raise ArtifactError(f"ModelOpt quantizes to {', '.join(LEVELS)}, not {level!r}", file=reference)
    shapes = read_shapes(reference)
    graph = onnx.load(str(reference / MODEL_FILE), load_external_data=False)
    weights, others = weight_gemms(graph)
    kwargs: dict = {"calibration_method": "rtn_dq" if level == "int8" else options.int4_method, "block_size": options.block_size}
    if level == "int8":
        kwargs["layers_8bit"] = ",".join(weights)
    excluded = [f"^{_escape(name)}$" for name in others]
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix="edgeft-modelopt-") as scratch:
        src = Path(scratch) / MODEL_FILE
        for f in reference.iterdir():  # ModelOpt rewrites its input: it works on a copy
            if f.name.startswith(MODEL_FILE):
                shutil.copyfile(f, Path(scratch) / f.name)
        from edgeft.child import call

        # In a child: ModelOpt prints, compiles a C++ helper with setuptools from the working folder on
        # first use (here, the scratch folder), and may exit the process on a build error.
        call(_run_modelopt, src, tmp / MODEL_FILE, calibration_feed(shapes, calibration), excluded, kwargs,
             what=f"ModelOpt quantizing {reference.name} to {level}")
        for f in reference.iterdir():
            if f.is_file() and not f.name.startswith(MODEL_FILE) and f.name != MARKER:
                shutil.copyfile(f, tmp / f.name)
        (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return out_dir


def _escape(name: str) -> str:
    import re

    return re.escape(name)


def _run_modelopt(src: Path, dst: Path, feed: dict, excluded: list[str], kwargs: dict) -> None:
    from edgeft.progress import muted_native_stderr

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.chdir(src.parent)
    try:
        from modelopt.onnx.quantization import quantize as mo_quantize
    except ImportError as exc:
        raise ArtifactError(f"{exc.name} is not installed (run `make setup`)", file=src) from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ModelOpt logs INFO lines and GPU probes through the root logger
    try:
        with muted_native_stderr():
            mo_quantize(str(src), quantize_mode="int4", calibration_data=feed, calibration_eps=["cpu"],
                        nodes_to_exclude=excluded, output_path=str(dst), log_level="ERROR",
                        use_external_data_format=True, **kwargs)
    except Exception as exc:  # ModelOpt raises plain ValueError/RuntimeError/AttributeError with its reason
        raise ArtifactError(f"ModelOpt could not quantize the graph ({type(exc).__name__}: {exc})", file=src) from None
    finally:
        root.setLevel(level)
    if not dst.is_file():
        raise ArtifactError("ModelOpt wrote no quantized graph", file=src)
    _share_duplicates(dst)


def _share_duplicates(path: Path) -> None:
    """ModelOpt gives every node its own copy of a shared constant, so a tied embedding table (the
    Gather's and the head's) is stored twice. Point every user at one copy and drop the others."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for init in list(model.graph.initializer):
        if len(init.dims) < 2:  # only large tables are worth a hash
            continue
        data = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data.tobytes()).hexdigest())
        if key in first:
            rename[init.name] = first[key]
            model.graph.initializer.remove(init)
        else:
            first[key] = init.name
    if not rename:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    data_file = path.with_name(path.name + "_data")
    tmp = path.with_name(path.name + ".dedup")
    onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_file.name + ".dedup", size_threshold=1024)
    written = path.with_name(data_file.name + ".dedup")
    if written.is_file():
        os.replace(written, data_file)
    # the graph names its data file: rewrite it to the final name
    model = onnx.load(str(tmp), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = data_file.name
    onnx.save_model(model, str(path))
    tmp.unlink()
