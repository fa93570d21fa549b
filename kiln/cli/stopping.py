"""SIGTERM or SIGINT to `kiln optimize` / `kiln reoptimize`: the command and every process under it end within
seconds, whatever the run is doing.

A Python signal handler runs only when the main thread is back in the interpreter: inside TVM's C++ compiler, or
while Prefect reports the crash and drains its log and event queues at exit, a loaded machine kept SIGTERM
waiting for more than 10 s. So the command forks before the run starts. The child does the work as before, with
its own handler that ends the run in order (children killed, the flow run marked, staging removed). The parent
only waits, so it answers a signal at once: it passes the signal on, gives the child GRACE_S to end, then kills
every process left under it (the child, the isolation forkserver and its children, TVM's builder and runner
pools, an embedded Prefect server) and exits with 128 + the signal's number. As a child subreaper it adopts
what the child leaves orphaned, so no process escapes by outliving its parent.

Prefect-free: the parent never imports Prefect, the child imports it only after the fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import signal
import sys
import time

import psutil
from rich.markup import escape

from kiln.cli.app import err

GRACE_S = 2.5  # for the child's orderly stop (about 2 s on a loaded machine), then all is killed: inside 5 s
SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_CHILD_SUBREAPER = 36
_said = mmap.mmap(-1, 1)  # shared with the forked child: whether one of the two printed the "stopped:" line


class _Signalled(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def say_stopped(signum: int, after: str = "") -> None:
    """`stopped: SIGTERM received{after}`, once: the child says it when it stops in order, the parent when it had
    to kill the child first."""
    if _said[0]:
        return
    _said[0] = 1
    err.print(f"[bold red]stopped:[/] {signal.Signals(signum).name} received{escape(after)}", highlight=False)


def supervise(after: str = "") -> None:
    """Fork. Return in the child, which runs the command. The parent never returns: it exits as the child did,
    or on SIGTERM/SIGINT stops the child and all below it and prints `stopped: SIGNAL received{after}`."""
    for stream in (sys.stdout, sys.stderr, err.file):
        with contextlib.suppress(Exception):
            stream.flush()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # none may arrive between the fork and the handlers
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    pid = os.fork()
    if pid == 0:
        for sig in SIGNALS:  # until the run installs its handler a signal ends the child quietly; the parent says so
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return

    def on_signal(signum, frame):
        raise _Signalled(signum)

    for sig in SIGNALS:
        signal.signal(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        code = os.waitstatus_to_exitcode(_wait(pid))
    except _Signalled as stop:
        code = _stop(pid, stop.signum, after)
    else:
        if code < 0:  # the child was killed (the OOM killer, a crash in native code, a signal sent to it alone)
            err.print(f"[bold red]error:[/] the run was killed by {signal.Signals(-code).name}", highlight=False)
            code = 128 - code
    with contextlib.suppress(Exception):
        err.file.flush()
    os._exit(code)  # the child owns the command's atexit work (Prefect's, tempfiles): nothing of it runs twice


def _wait(pid: int) -> int:
    """The child's wait status; orphans adopted meanwhile are reaped as they end."""
    while True:
        found, status = os.waitpid(-1, 0)
        if found == pid:
            return status


def _stop(pid: int, signum: int, after: str) -> int:
    """Pass `signum` on, wait up to GRACE_S for the child, kill whatever is left below; the exit code."""
    for sig in SIGNALS:  # a second Ctrl-C must not cut this short
        signal.signal(sig, signal.SIG_IGN)
    me = psutil.Process()
    before = _below(me)  # taken first: the child may orphan some of them before the grace is over
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
    code = None
    deadline = time.monotonic() + GRACE_S
    while code is None and time.monotonic() < deadline:
        found, status = os.waitpid(pid, os.WNOHANG)
        if found:
            code = os.waitstatus_to_exitcode(status)
        else:
            time.sleep(0.05)
    left = {p for p in before + _below(me) if _alive(p)}
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(left), timeout=2)
    with contextlib.suppress(ChildProcessError):  # reap the adopted ones
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    say_stopped(signum, after)  # unless the child did
    return 128 + signum


def _below(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return proc.children(recursive=True)
    return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
