"""Bad input to the onnx backend: one line naming file, place and reason; exit code 2; no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from edgeft.backends.base import Artifact
from edgeft.sweep import compile_one
from edgeft.config import load_target
from edgeft.errors import ArtifactError, ConfigError, EdgeftError, UnsupportedArchitecture

pytest.importorskip("onnxruntime")


def _profile(tmp_path, quant="fp32", extra=""):
    path = tmp_path / "t.toml"
    path.write_text(f'backend = "onnx"\nquant = "{quant}"\nthreads = 1\n'
                    "[bench]\nprompt_tokens = 8\nnew_tokens = 4\nruns = 1\nwarmup = 0\ncontext = 64\n" + extra)
    return path


@pytest.fixture(scope="module")
def fp32_folder(tiny_llama_dir, tmp_path_factory):
    from edgeft.backends.onnx.backend import OnnxBackend

    tmp = tmp_path_factory.mktemp("onnx-err")
    return compile_one(OnnxBackend(), tiny_llama_dir, load_target(_profile(tmp)), tmp / "out").path


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def _one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unsupported_architecture_cli(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    proc = subprocess.run([sys.executable, "-m", "edgeft.cli", "build", "--no-distill", "--model", str(model), "--target", "onnx",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    _one_line(proc, "GPT2LMHeadModel", "LlamaForCausalLM")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_in_exporter(tmp_path):
    """compile() called directly (not through `build`) refuses before starting the builder."""
    from edgeft.backends.onnx.export import export
    from edgeft.backends.onnx.options import OnnxOptions

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(UnsupportedArchitecture) as err:
        export(model, tmp_path / "out", "int4", OnnxOptions())
    assert "config.json: architectures: architecture 'GPT2LMHeadModel' is not supported" in err.value.one_line()
    assert not (tmp_path / "out").exists()


def test_corrupt_onnx_given_to_bench(fp32_folder, tmp_path):
    """The bench worker (a child process) reports the corrupt graph as our one-line error."""
    from edgeft.bench.run import bench

    folder = _copy(fp32_folder, tmp_path)
    (folder / "model.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(EdgeftError) as err:
        bench(Artifact(path=folder / "model.onnx", backend="onnx", quant="int4"), load_target(_profile(tmp_path)))
    line = err.value.one_line()
    assert err.value.exit_code == 2 and "\n" not in line
    assert "model.onnx" in line and "corrupt ONNX file" in line


def test_missing_external_data(fp32_folder, tmp_path):
    from edgeft.backends.onnx.backend import OnnxBackend

    folder = _copy(fp32_folder, tmp_path)
    (folder / "model.onnx.data").unlink()
    with pytest.raises(ArtifactError) as err:
        OnnxBackend().load(Artifact(path=folder, backend="onnx", quant="int4"), load_target(_profile(tmp_path)))
    assert err.value.exit_code == 2
    assert "model.onnx: external data file model.onnx.data is missing" in err.value.one_line()


def test_truncated_external_data(fp32_folder, tmp_path):
    from edgeft.backends.onnx.backend import OnnxBackend

    folder = _copy(fp32_folder, tmp_path)
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="model.onnx.data is truncated"):
        OnnxBackend().load(Artifact(path=folder, backend="onnx", quant="int4"), load_target(_profile(tmp_path)))


def test_folder_without_genai_config(fp32_folder, tmp_path):
    from edgeft.backends.onnx.backend import OnnxBackend

    folder = _copy(fp32_folder, tmp_path)
    (folder / "genai_config.json").unlink()
    with pytest.raises(ArtifactError, match="genai_config.json is missing"):
        OnnxBackend().load(Artifact(path=folder, backend="onnx", quant="int4"), load_target(_profile(tmp_path)))


def test_builder_failure_is_one_line(tiny_llama_dir, tmp_path):
    """A model folder whose weights cannot be read: the builder's reason, one line, no output left behind."""
    from edgeft.backends.onnx.backend import OnnxBackend

    model = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, model)
    (model / "model.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "out"
    with pytest.raises(ArtifactError) as err:
        compile_one(OnnxBackend(), model, load_target(_profile(tmp_path, "int4")), out)
    line = err.value.one_line()
    assert line.startswith(str(model)) and "model builder failed" in line and "\n" not in line
    assert not (out / "model-onnx-int4").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")] if out.exists() else True


def test_builder_reason_is_its_last_exception_line():
    """The builder logs warnings after its traceback; the reason shown is the exception, else the last line."""
    from edgeft.backends.onnx.export import _failure_line

    log = ["Traceback (most recent call last):", '  File "builder.py", line 9', "NotImplementedError: rope scaling 'yarn'",
           "WARNING: cleaning up", ""]
    assert _failure_line(log) == "NotImplementedError: rope scaling 'yarn'"
    assert _failure_line(["ValueError: first", "  OSError: second  "]) == "OSError: second"
    assert _failure_line(["loading", "writing model.onnx", ""]) == "writing model.onnx"
    assert _failure_line([]) == "no output"


def test_bad_onnx_options_reported_together(tmp_path):
    path = _profile(tmp_path, "int4", extra='[onnx]\nblock_size = 48\naccuracy_level = 7\nsymmetric = "yes"\nwidth = 1\n')
    with pytest.raises(ConfigError) as err:
        load_target(path)
    keys = [key for key, _ in err.value.problems]
    assert keys == ["onnx.block_size", "onnx.accuracy_level", "onnx.symmetric", "onnx.width"]
    assert "must be one of 16, 32, 64, 128, 256, got 48" in err.value.one_line()


def test_bad_onnx_level_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeft.cli", "build", "--no-distill", "--target", "onnx", "--quant", "q4_k_m",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    _one_line(proc, "quant", "fp32, int8, int4")


def test_graph_onnxruntime_refuses_is_not_left_under_final_name(tiny_llama_dir, tmp_path):
    """Regression: onnxruntime-genai 0.18 writes asymmetric int4 with tied embeddings as a graph ONNX
    Runtime cannot load (a uint8 Reshape where float is expected); that folder must not be shipped."""
    from edgeft.backends.onnx.backend import OnnxBackend

    out = tmp_path / "out"
    target = load_target(_profile(tmp_path, "int4", extra="[onnx]\nsymmetric = false\n"))
    try:
        artifact = compile_one(OnnxBackend(), tiny_llama_dir, target, out)
    except ArtifactError as err:
        assert "onnxruntime cannot load" in err.one_line() and str(tiny_llama_dir) in err.one_line()
        assert not (out / "model-onnx-int4").exists()
    else:  # a fixed builder: then the folder must load and run
        from edgeft.backends.onnx.runner import OnnxRunner

        runner = OnnxRunner(artifact.path, threads=1, context=64)
        assert len(runner.generate([1, 2, 3], 4).tokens) == 4
