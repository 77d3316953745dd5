"""The llama.cpp build flags: every instruction set the host advertises, never AMX, never -march=native."""

from __future__ import annotations

import json

from edgeft.backends.gguf import llama_build

# /proc/cpuinfo of the host where the native build died: AVX-512 everywhere, AMX advertised and granted.
AMX_HOST = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2 "
            "avx_vnni avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16 avx512_fp16 "
            "amx_tile amx_int8 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
AVX2_HOST = "flags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2 avx512f\n"  # avx512f alone is not ggml's AVX512


def test_amx_is_never_compiled_in_even_when_advertised():
    flags = llama_build.cpu_flags(AMX_HOST)
    assert {"amx_tile", "amx_int8"} <= flags and "fpu" in flags
    options = llama_build.isa_options(flags)
    assert not any(options[o] for o in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"))
    assert all(options[o] for o in ("GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX_VNNI"))
    args = llama_build.cmake_args(options)
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AMX_INT8=OFF" in args
    assert not any("native" in a.lower() and "OFF" not in a for a in args)


def test_a_set_is_on_only_when_every_flag_it_compiles_in_is_advertised():
    options = llama_build.isa_options(llama_build.cpu_flags(AVX2_HOST))
    assert options["GGML_AVX2"] and options["GGML_FMA"] and options["GGML_F16C"]
    assert not options["GGML_AVX512"]  # ggml's AVX512 adds -mavx512cd/vl/dq/bw too
    assert not options["GGML_AVX_VNNI"]


def test_the_isa_ceiling_drops_every_set_above_it():
    flags = llama_build.cpu_flags(AMX_HOST)
    avx2 = llama_build.isa_options(flags, "avx2")
    assert avx2["GGML_AVX2"] and not avx2["GGML_AVX512"] and not avx2["GGML_AVX_VNNI"]
    sse = llama_build.isa_options(flags, "sse42")
    assert sse["GGML_SSE42"] and not any(sse[o] for o in ("GGML_AVX", "GGML_F16C", "GGML_FMA", "GGML_AVX2"))


def test_a_build_is_named_by_its_version_and_flags():
    a = llama_build.cmake_args(llama_build.isa_options(llama_build.cpu_flags(AMX_HOST)))
    b = llama_build.cmake_args(llama_build.isa_options(llama_build.cpu_flags(AVX2_HOST)))
    assert llama_build.build_key("0.3.36", a) == llama_build.build_key("0.3.36", a)
    assert llama_build.build_key("0.3.36", a) != llama_build.build_key("0.3.36", b)
    assert llama_build.build_key("0.3.36", a) != llama_build.build_key("0.3.35", a)


def test_a_venv_without_a_matching_stamp_is_rebuilt(tmp_path, monkeypatch):
    """Regression: `import llama_cpp` succeeding kept a native build forever; now the stamp must name this build."""
    calls = []
    monkeypatch.setattr(llama_build, "_importable", lambda python: True)
    monkeypatch.setattr(llama_build, "cache_dir", lambda: tmp_path / "cache")

    def fake_build(python, version, args, dest):
        dest.mkdir(parents=True)
        (dest / "llama_cpp_python-0.3.36-cp311-linux_x86_64.whl").write_bytes(b"")
        calls.append(("build", args))
        return dest

    monkeypatch.setattr(llama_build, "_build_wheel", fake_build)
    monkeypatch.setattr(llama_build.subprocess, "run", lambda cmd, **kw: calls.append(("pip", cmd)) or
                        type("R", (), {"returncode": 0})())
    venv = tmp_path / "venv"
    venv.mkdir()
    flags = llama_build.cpu_flags(AMX_HOST)
    stamp = llama_build.ensure("python", venv, "0.3.36", flags=flags)  # no stamp: an old native build
    assert [c[0] for c in calls] == ["build", "pip"]
    assert json.loads((venv / llama_build.STAMP_NAME).read_text())["key"] == stamp["key"]
    calls.clear()
    llama_build.ensure("python", venv, "0.3.36", flags=flags)  # the same build: nothing to do
    assert calls == []
    llama_build.ensure("python", venv, "0.3.36", flags=llama_build.cpu_flags(AVX2_HOST))  # another CPU
    assert [c[0] for c in calls] == ["build", "pip"]
