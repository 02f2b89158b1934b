"""Worker processes that do not outlive the job that started them.

A pool worker whose job is SIGKILLed (a preempted job, an OOM kill) is not told: it sits on the pool's queue (or in
the middle of a task) forever. With the forkserver start method the kernel's parent-death signal
(``prctl(PR_SET_PDEATHSIG)``) does not help: a worker's parent is the fork server, and the fork server stays up as
long as any worker holds its "alive" pipe, i.e. as long as the workers live. So :func:`die_with_parent` (meant
for a pool ``initializer``) starts a daemon thread that waits on a pidfd of the job (``pidfd_open(2)``, Linux >=
5.3: readable once the job has exited) and ends the worker then; without pidfds the thread polls the job's pid.
When the job is the worker's direct parent (fork / spawn) the parent-death signal is set as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_S = 1.0
_EXIT_CODE = 128 + signal.SIGKILL  # what a shell reports for a killed process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (a recycled pid)
        return True
    return True


def _set_pdeathsig(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux only); True on success."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _wait_pidfd(fd: int) -> None:
    select.select([fd], [], [])
    os._exit(_EXIT_CODE)


def _poll_pid(job_pid: int) -> None:
    while _pid_alive(job_pid):
        time.sleep(_POLL_S)
    os._exit(_EXIT_CODE)


def die_with_parent(job_pid: int) -> None:
    """Make this (worker) process exit as soon as the job process ``job_pid`` has exited.

    Call it first thing in a pool initializer, with the job's ``os.getpid()`` passed in ``initargs``.
    """
    if os.getppid() == job_pid:
        _set_pdeathsig(signal.SIGKILL)
    try:
        fd = os.pidfd_open(job_pid)
    except ProcessLookupError:  # the job died between starting this worker and now
        os._exit(_EXIT_CODE)
    except (AttributeError, OSError):  # no pidfds (not Linux, old kernel, seccomp): poll
        threading.Thread(target=_poll_pid, args=(job_pid,), name="die-with-job", daemon=True).start()
        return
    threading.Thread(target=_wait_pidfd, args=(fd,), name="die-with-job", daemon=True).start()
