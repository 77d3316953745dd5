"""Native work (llama.cpp, ONNX Runtime) runs in a child process, so that a crash is one line, not the CLI's death.

A runtime built for the wrong CPU dies by SIGILL on its first batch; inside the CLI process that is
a Python fatal error, a core dump and no message. In a child it is an exit status we can name.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from typing import Any, Callable, TypeVar

from edgeft.errors import BudgetExceeded, EdgeftError, ParityError

T = TypeVar("T")

# What a signal most likely means when it ends a child running a model.
SIGNAL_CAUSES = {
    signal.SIGILL: "an instruction this CPU or OS refuses: the runtime's native build does not fit this host; "
                   "rebuild it with `make setup`",
    signal.SIGKILL: "killed from outside, usually by the kernel for lack of memory; "
                    "free memory or pick a smaller model or context",
    signal.SIGSEGV: "a memory fault in native code (a corrupt model file or a runtime bug)",
    signal.SIGBUS: "a bus error, usually a model file truncated or replaced while it was mapped",
    signal.SIGABRT: "native code aborted (a failed assertion inside the runtime)",
    signal.SIGFPE: "an arithmetic fault in native code",
}


class NativeCrash(Exception):
    """A child process running native code died by a signal. Internal error: exit code 1."""

    exit_code = 1


class ChildFailed(Exception):
    """A child process raised an unexpected exception. Internal error: exit code 1."""

    exit_code = 1


def signal_message(returncode: int, what: str) -> str | None:
    """One line for a child that died by a signal (a negative return code), else None."""
    if returncode >= 0:
        return None
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"{what} died by signal {-returncode}"
    cause = SIGNAL_CAUSES.get(sig, "killed by a signal")
    return f"{what} died by {sig.name}: {cause}"


def exit_failure(returncode: int, what: str, detail: str = "") -> Exception:
    """The exception for a child that ended badly: a named signal, or a plain non-zero exit."""
    message = signal_message(returncode, what)
    if message is not None:
        return NativeCrash(message)
    return ChildFailed(f"{what} failed (exit {returncode}){': ' + detail if detail else ''}")


def _child_main(conn, fn: Callable[..., Any], args: tuple, kwargs: dict, quiet: bool) -> None:
    from edgeft.progress import mute_import_noise, set_quiet

    set_quiet(quiet)
    mute_import_noise()
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except EdgeftError as exc:
        conn.send(("user", exc.exit_code, exc.one_line()))
    except (ParityError, BudgetExceeded) as exc:
        conn.send((type(exc).__name__, exc.exit_code, str(exc)))
    except KeyboardInterrupt:
        conn.send(("interrupt",))
    except BaseException as exc:  # an internal error: its last frame, on one line
        frame = traceback.extract_tb(exc.__traceback__)[-1:] or [None]
        where = f" at {frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno}" if frame[0] else ""
        conn.send(("internal", 1, f"{type(exc).__name__}: {exc}{where}"))
    finally:
        conn.close()


def call(fn: Callable[..., T], *args: Any, what: str, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a fresh child process; its result, or its error re-raised here.

    `fn` must be importable (module level) and its arguments and result picklable. Errors keep their
    meaning: bad input stays EdgeftError (exit 2), a signal becomes NativeCrash naming it (exit 1)."""
    from edgeft import progress

    ctx = multiprocessing.get_context("spawn")  # no forked copy of torch's or llama.cpp's threads
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(sender, fn, args, kwargs, progress._QUIET), daemon=True)
    proc.start()
    sender.close()
    try:
        try:
            reply = receiver.recv()
        except EOFError:  # the child died before it could answer
            reply = None
        proc.join()
    except BaseException:
        proc.terminate()
        proc.join()
        raise
    finally:
        receiver.close()
    if reply is None:
        raise exit_failure(proc.exitcode if proc.exitcode is not None else -1, what, "no answer")
    kind = reply[0]
    if kind == "ok":
        return reply[1]
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "user":
        raise EdgeftError(reply[2])
    if kind == "ParityError":
        raise ParityError(reply[2])
    if kind == "BudgetExceeded":
        raise BudgetExceeded(reply[2])
    raise ChildFailed(f"{what}: internal error: {reply[2]}")
