"""Run Locust as a child and stop its whole process group if the process that started it dies.

``python path/to/_watch.py PARENT_PID GRACE WORKDIR -- COMMAND...``, run as a script so that
it imports nothing of the package and never Locust (whose import patches the process with
gevent). It leads the Locust process group: when the storm's process goes away without
stopping it (SIGKILL, a crash: no ``finally`` of the parent runs then), the master and its
workers get SIGTERM, then SIGKILL after GRACE seconds, and WORKDIR is removed. Otherwise
it exits with Locust's own status.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

#: Seconds between two looks at the parent.
POLL = 0.1


def _stop_group(child: subprocess.Popen[bytes], grace: float, workdir: str) -> None:
    group = os.getpgid(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the signal is for Locust, not for us
    os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace)
    shutil.rmtree(workdir, ignore_errors=True)
    os.killpg(group, signal.SIGKILL)  # leftovers (workers of the master), and this process


def main(argv: Sequence[str]) -> int:
    """Start the command, watch the parent, and return the command's exit status."""
    parent, grace, workdir, separator, *command = argv
    if separator != "--" or not command:
        print(f"usage: {sys.argv[0]} PARENT_PID GRACE WORKDIR -- COMMAND...", file=sys.stderr)
        return 2
    child = subprocess.Popen(command)
    # A stop from the storm's process (SIGTERM to the group) reaches Locust directly;
    # this process waits for Locust to finish rather than leave it unwatched.
    signal.signal(signal.SIGTERM, lambda *_: None)
    while True:
        code = child.poll()
        if code is not None:
            return code if code >= 0 else 128 - code
        if os.getppid() != int(parent):
            _stop_group(child, float(grace), workdir)
        time.sleep(POLL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
