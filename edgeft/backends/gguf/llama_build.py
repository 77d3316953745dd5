"""Builds and installs llama-cpp-python so that it runs on this host, not just on the CPU that compiled it.

llama.cpp's default build is native (`-march=native`): it compiles in every instruction set the
CPU *advertises*. On one host of the kind we run on, the CPU advertises AMX and the OS grants it,
yet AMX tile loads fault inside the VM: the native build crashes with SIGILL on the first batch of
64 tokens. So we build with GGML_NATIVE=OFF and name each instruction set ourselves: those the
host advertises, never AMX (llama.cpp uses AMX only for batched matrix products, prefill, not for
decode; it is the one set seen to fault). `make setup` then proves the build on a real workload
(`edgeft.backends.gguf.smoke`), which also catches a set that is advertised but refused.

Why not llama.cpp's runtime-dispatched variants (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS): they
compile the CPU backend a dozen times (a much longer build on 2 cores), and their variant choice
scores the CPUID bits, so on the AMX host it would pick the `sapphirerapids` variant, AMX included.

Run as `python -m edgeft.backends.gguf.llama_build` (stdlib only: it runs before edgeft is installed).
A wheel is built once per (version, flags) into a cache outside the venv, so a fresh clone on the
same machine installs it in seconds; the venv keeps a stamp of what it holds, and a venv whose
llama-cpp-python was built another way (or before this stamp existed) is rebuilt once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeft.bench.machine import cpu_flags  # noqa: F401 - stdlib only, and the tests read it here

PACKAGE = "llama-cpp-python"
STAMP_NAME = ".edgeft-llama-build.json"

# ggml's CMake option -> the /proc/cpuinfo flags it compiles in (ggml-cpu's CMakeLists adds one
# -m flag per option; GGML_AVX512 alone adds five).
ISA_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_F16C": ("f16c",),
    "GGML_FMA": ("fma",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX2": ("avx2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# Never compiled in, whatever the CPU says (see the module docstring).
REFUSED_OPTIONS = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
# Options that only shorten the build: the multimodal library and llama.cpp's tools we never load.
BUILD_OPTIONS = ("-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF")
# `--isa` ceilings for a host whose advertised sets fault: each drops the options after it.
ISA_LEVELS = {"auto": None, "avx2": "GGML_AVX_VNNI", "avx": "GGML_AVX2", "sse42": "GGML_AVX"}


def isa_options(flags: set[str], level: str = "auto") -> dict[str, bool]:
    """Each ggml instruction-set option on or off for a CPU with `flags`, capped at `level`."""
    options: dict[str, bool] = {}
    ceiling = ISA_LEVELS[level]
    capped = False
    for option, needs in ISA_OPTIONS.items():
        capped = capped or option == ceiling
        options[option] = not capped and all(f in flags for f in needs)
    for option in REFUSED_OPTIONS:
        options[option] = False
    return options


def cmake_args(options: dict[str, bool]) -> list[str]:
    return ["-DGGML_NATIVE=OFF", *(f"-D{k}={'ON' if v else 'OFF'}" for k, v in options.items()), *BUILD_OPTIONS]


def build_key(version: str, args: list[str]) -> str:
    """Names one build: same version, same flags, same Python -> the same wheel."""
    text = json.dumps({"version": version, "cmake": args, "python": sys.version_info[:2]}, sort_keys=True)
    return f"{version}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def cache_dir() -> Path:
    root = os.environ.get("EDGEFT_CACHE") or Path.home() / ".cache" / "edgeft"
    return Path(root) / "llama-cpp-python"


def read_stamp(venv: Path) -> dict | None:
    try:
        return json.loads((venv / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def _build_wheel(python: str, version: str, args: list[str], dest: Path) -> Path:
    """Compile llama-cpp-python from source into `dest` (atomically: a temp folder renamed in place).

    pip's own wheel cache is bypassed: it keys wheels by source, not by CMAKE_ARGS, and would
    hand back a native build made earlier."""
    env = dict(os.environ, CMAKE_ARGS=" ".join(args), FORCE_CMAKE="1",
               CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        cmd = [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "--no-binary", PACKAGE,
               "-w", str(tmp), f"{PACKAGE}=={version}"]
        if subprocess.run(cmd, env=env).returncode != 0:
            raise SystemExit(f"llama_build: compiling {PACKAGE} {version} failed (flags: {' '.join(args)}); "
                             "see the compiler output above")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure(python: str, venv: Path, version: str, level: str = "auto", *, flags: set[str] | None = None) -> dict:
    """Install the portable build into `venv` unless its stamp says it already holds exactly this build."""
    options = isa_options(cpu_flags() if flags is None else flags, level)
    args = cmake_args(options)
    key = build_key(version, args)
    stamp = read_stamp(venv)
    if stamp and stamp.get("key") == key and _importable(python):
        return stamp
    if stamp is None and _importable(python):
        print(f"llama_build: {PACKAGE} in {venv} was built before edgeft chose its flags; rebuilding it once", flush=True)
    wheels = cache_dir() / key
    if not list(wheels.glob("*.whl")):
        print(f"llama_build: compiling {PACKAGE} {version} for this CPU (several minutes, once per flag set): "
              + ", ".join(k.removeprefix("GGML_") for k, v in options.items() if v), flush=True)
        _build_wheel(python, version, args, wheels)
    wheel = sorted(wheels.glob("*.whl"))[-1]
    cmd = [python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"llama_build: installing {wheel} failed")
    stamp = {"key": key, "version": version, "cmake_args": args, "isa_level": level,
             "enabled": [k for k, v in options.items() if v], "wheel": str(wheel)}
    (venv / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    (venv / ".edgeft-llama-smoke.json").unlink(missing_ok=True)  # a new build must be proven again
    return stamp


def _importable(python: str) -> bool:
    # Import only: a faulting instruction shows on the first batch, which the smoke test runs.
    return subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix))
    parser.add_argument("--version", required=True, help=f"{PACKAGE} version to build")
    parser.add_argument("--isa", choices=sorted(ISA_LEVELS), default=os.environ.get("EDGEFT_LLAMA_ISA", "auto"),
                        help="instruction-set ceiling (auto: what the CPU advertises, AMX never)")
    parser.add_argument("--show", action="store_true", help="print the flags that would be used, build nothing")
    args = parser.parse_args(argv)
    if args.show:
        print(" ".join(cmake_args(isa_options(cpu_flags(), args.isa))))
        return 0
    stamp = ensure(sys.executable, args.venv, args.version, args.isa)
    print(f"llama_build: {PACKAGE} {stamp['version']} ({', '.join(e.removeprefix('GGML_') for e in stamp['enabled'])}; "
          "AMX off)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
