"""Progress bars on a terminal, silence in CI and pipes."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def enabled() -> bool:
    return not _QUIET and sys.stderr.isatty() and not os.environ.get("CI")


def progress(items: Iterable[T], *, desc: str, total: int | None = None) -> Iterator[T]:
    if not enabled():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)


def status(message: str) -> None:
    """One short line about what is happening now; quiet runs print nothing."""
    if not _QUIET:
        print(message, file=sys.stderr, flush=True)


# Loggers whose import-time warnings tell our users nothing: transformers and peft import torchao
# whenever it is installed, and torchao then reports CUDA kernels a CPU-only torch cannot load,
# while torch flags a deprecation inside torchao. Neither affects NF4 or anything else we run.
# bitsandbytes, on a CPU with AVX512-BF16, tries the optional `kernels` package (which would fetch a
# kernel from a model hub at run time: we never install it) and warns on every run that it is absent;
# its own CPU path runs instead.
IMPORT_NOISE = ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops")
# transformers 5 renamed the gradient-checkpointing methods and the decoders' `past_key_values`
# argument, which peft still uses (its prefix tuning passes one); nothing to act on.
DEPRECATION_NOISE = r".*(gradient_checkpointing\w*|is_gradient_checkpointing|past_key_values)` is deprecated"


def mute_import_noise() -> None:
    """Raise the IMPORT_NOISE loggers to errors only and drop DEPRECATION_NOISE; cheap (imports nothing)."""
    import logging
    import warnings

    for name in IMPORT_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=DEPRECATION_NOISE, category=FutureWarning)


# transformers modules that draw their own tqdm bar, deaf to disable_progress_bar(): its loader of
# GGUF *source* files (the default model is one), whatever the target backend.
LOADER_BAR_MODULES = ("transformers.modeling_gguf_pytorch_utils",)


def quiet_libraries() -> None:
    """Silence transformers' own bars and logs unless we show progress ourselves (a backend
    quiets its runtime's logs itself when it loads it).

    Called right before the heavy libraries do work, since they are imported lazily."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    if not enabled():
        hf_logging.disable_progress_bar()
        _silence_loader_bars()


def _silence_loader_bars() -> None:
    """Without this, --quiet runs and logs get a bar per model load."""
    import functools
    import importlib

    for name in LOADER_BAR_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        bar = getattr(module, "tqdm", None)
        if bar is not None and not isinstance(bar, functools.partial):
            module.tqdm = functools.partial(bar, disable=True)


class muted_native_stderr:
    """Point file descriptor 2 away from the terminal while native code runs: a native quantizer may
    log every tensor it falls back on straight to stderr, whatever the Python log level says. The text
    goes to an unnamed temporary file, so that a failure can still give its reason (`reason()`). Use
    it only in a child process of ours (`edgeft.child`), where nothing else is writing to stderr."""

    def __enter__(self) -> "muted_native_stderr":
        import tempfile

        sys.stderr.flush()
        self._log = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._log.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)

    def reason(self, *paths: "os.PathLike[str]", limit: int = 8192) -> str:
        """The last line the native code logged that names an error or failure, else its last line
        ("" when it logged nothing); each of `paths` in it shortened to its file name."""
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - limit))
        lines = [line.strip() for line in self._log.read().decode("utf-8", "replace").splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower() or "fail" in line.lower()]
        said = (errors or lines or [""])[-1]
        for path in paths:
            said = said.replace(os.fspath(path), os.path.basename(path))
        return said
