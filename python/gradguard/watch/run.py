"""Running a script as `python script.py args` would, under a Watcher, and
writing the watcher's outputs whatever way the script ends."""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
import traceback

__all__ = ["run_watched"]


class _Terminated(BaseException):
    """SIGTERM (torchrun stopping the other ranks after one failed): unwinds the
    script like Ctrl-C does, so that the reports are written."""


def _exit_code(error: SystemExit) -> int:
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits with 1
    return 1


def run_watched(target, arguments, *, module=False, command=None, **watcher_options) -> int:
    """Run target (a script path, or a module name with module=True) with
    sys.argv = [target, *arguments] and __name__ == "__main__", under a
    Watcher(**watcher_options); returns the script's exit status (its
    sys.exit code, 1 after an uncaught exception, 130 after Ctrl-C, 143
    after SIGTERM), the outputs written in every case."""
    try:
        import torch  # noqa: F401 - the watcher hooks torch's optimisers
    except ImportError:
        print("gradguard watch: needs PyTorch (pip install torch)", file=sys.stderr)
        return 2
    from .watcher import Watcher

    if not module and not os.path.exists(target):
        print(f"gradguard watch: {target}: no such file", file=sys.stderr)
        return 2
    watcher = Watcher(**watcher_options)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [target, *arguments]
    if not module:
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))  # as `python script.py` puts its folder first
    termination = _TerminationWatch(watcher, command) if _in_main_thread() else None
    code = 0
    try:
        try:
            if module:
                _KEPT.append(runpy.run_module(target, run_name="__main__", alter_sys=True))
            else:
                _KEPT.append(runpy.run_path(target, run_name="__main__"))
        except BaseException as error:
            _KEPT.append(error)  # its traceback holds the script's frames and globals
            raise
    except SystemExit as error:
        code = _exit_code(error)
    except KeyboardInterrupt:
        print("\ngradguard watch: interrupted", file=sys.stderr)
        code = 130
    except _Terminated:
        print("gradguard watch: terminated", file=sys.stderr)
        code = 143
    except BaseException as error:  # the script's own error: shown as Python shows it, then the reports
        _print_from_script(error, target if not module else None)
        code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        if termination is not None:
            termination.hold()  # a SIGTERM now (torchrun stopping this rank) must not cut the reports short
        watcher.close(exit_code=code, command=command)
        if termination is not None:
            termination.stop()
    return code


def _print_from_script(error, script):
    """The traceback from the script's first frame on (the runner's frames left
    out, as `python script.py` shows it)."""
    trace = error.__traceback__
    here = os.path.dirname(os.path.abspath(__file__))
    while trace is not None and (
        trace.tb_frame.f_code.co_filename.startswith(here) or "runpy" in trace.tb_frame.f_code.co_filename
    ):
        trace = trace.tb_next
    traceback.print_exception(type(error), error, trace)


class _TerminationWatch:
    """SIGTERM (torchrun stopping the other ranks after one failed, a scheduler's
    preemption) unwinds the script like Ctrl-C, so the reports are written by
    run_watched. A rank blocked in a collective whose peer died never gets back
    to Python to unwind: a helper thread, woken by the signal through
    signal.set_wakeup_fd, gives the main thread GRACE seconds, then writes the
    reports itself and ends the process with status 143 (torchrun's own
    grace before SIGKILL is 30 s). Only a default SIGTERM disposition is
    replaced, and only an unused wakeup fd is taken."""

    GRACE = 3.0

    def __init__(self, watcher, command):
        self.previous = None
        self.reader = self.writer = None
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the script's launcher handles SIGTERM itself

        def terminate(signum, frame):
            raise _Terminated

        self.previous = signal.signal(signal.SIGTERM, terminate)
        self.reader, self.writer = os.pipe()
        os.set_blocking(self.writer, False)
        if signal.set_wakeup_fd(self.writer) != -1:  # someone else's (asyncio): give it back, no helper
            signal.set_wakeup_fd(-1)  # pragma: no cover - not under test
            os.close(self.reader)
            os.close(self.writer)
            self.reader = self.writer = None
            return
        self.watcher, self.command = watcher, command
        self.thread = threading.Thread(target=self._wait, name="gradguard-watch-sigterm", daemon=True)
        self.thread.start()

    def _wait(self):
        while True:  # the wakeup fd carries every signal's number (Ctrl-C too); stop() writes a 0
            data = os.read(self.reader, 64)
            if not data or 0 in data or signal.SIGTERM in data:
                break
        os.close(self.reader)
        if not data or signal.SIGTERM not in data:
            return  # stopped
        time.sleep(self.GRACE)  # the main thread unwinds and writes the reports, if it can
        if self.watcher.closed:
            return
        try:
            self.watcher.close(exit_code=143, command=self.command)
        finally:
            print("gradguard watch: terminated while blocked (reports written by the watcher)", file=sys.stderr)
            os._exit(143)

    def hold(self):
        """SIGTERM ignored while the reports are written (the process exits right after)."""
        if self.previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def stop(self):
        if self.previous is None:
            return
        signal.signal(signal.SIGTERM, self.previous)
        if self.writer is not None:
            signal.set_wakeup_fd(-1)
            try:
                os.write(self.writer, b"\0")  # wakes the helper, which returns
            except OSError:  # pragma: no cover - the helper has already ended
                pass
            os.close(self.writer)
            # Joined here, not left to the interpreter's exit: a thread still holding the
            # watcher (and through it torch tensors) when Python finalises frees them
            # without the GIL, inside torch's destructors, and the process aborts.
            self.thread.join(timeout=10.0)
            self.watcher = None


# The script's globals (or, when it raised, its exception, whose traceback
# holds them) live until the interpreter exits, as a script's own __main__
# does. Freed on return from runpy, they were torn down by this thread with the
# GIL held: a DDP model's process group then joins its gloo threads, one of
# which may be waiting for the GIL to release a Python object (a deadlock in
# torch, seen as a torchrun rank that never exits). At exit, threads that wait
# for the GIL end instead.
_KEPT = []


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
