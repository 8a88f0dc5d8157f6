"""A throwaway PostgreSQL cluster on loopback for the tests that need a real database.

``PostgresCluster.start()`` runs Debian's ``initdb`` into a temporary directory, starts the
server with ``pg_ctl`` on a free port of 127.0.0.1 (and a Unix socket in that directory
only), and creates a database. As root the server runs as the ``postgres`` user (PostgreSQL
refuses root); otherwise as the current user. Nothing listens beyond loopback.

The server is stopped (``pg_ctl stop -m immediate``) and its directory removed on every
exit path: ``stop()`` (the fixture's teardown, which pytest also runs on Ctrl-C), and a
watcher process for the others. The watcher holds the read end of a pipe whose write end
only this process has: when this process exits for any reason, SIGKILL included, the pipe
closes and the watcher stops the server; it also looks at its parent's pid in case a forked
child still holds the pipe. The server runs in its own session, so a Ctrl-C at the terminal
reaches the tests, not the server.

When the binaries are missing or no cluster can be started, ``unavailable()`` says why, and
the fixtures skip with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass

#: The database the tests use.
DATABASE = "storm"
#: Enough for a storm of 100 users each holding a connection, plus the pools' overflow.
MAX_CONNECTIONS = 300

# The watcher: ``python -c WATCHER PARENT_PID USER PG_CTL DATADIR``. It imports nothing of
# the tests, and stops the server when its stdin closes or its parent goes away.
WATCHER = r"""
import os, select, shutil, subprocess, sys
parent, user, pg_ctl, datadir = sys.argv[1:5]
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.2)
    if ready and not os.read(sys.stdin.fileno(), 4096):
        break
    if os.getppid() != int(parent):
        break
command = [pg_ctl, "stop", "-D", datadir, "-m", "immediate", "-w", "-t", "20"]
if user:
    command = ["runuser", "-u", user, "--", *command]
subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
shutil.rmtree(os.path.dirname(datadir), ignore_errors=True)
"""


def _bindir() -> str | None:
    """Debian's newest PostgreSQL binaries, or those on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unavailable() -> str | None:
    """Why no cluster can be started here, or None when one can."""
    if _bindir() is None:
        return (
            "PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` "
            "installs it as root)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is missing to run PostgreSQL as `postgres`"
    return None


@dataclass
class PostgresCluster:
    """A running throwaway cluster; ``url`` for SQLAlchemy/asyncpg, ``dsn`` for libpq."""

    root: str
    datadir: str
    port: int
    user: str | None
    bindir: str
    watcher: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/storm``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def dsn(self) -> str:
        """The libpq keyword form (psycopg, Django's settings)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={DATABASE}"

    @property
    def settings(self) -> dict[str, str]:
        """Django's ``DATABASES['default']`` entries for this cluster (minus ENGINE)."""
        return {
            "NAME": DATABASE,
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
        }

    def postmaster_pid(self) -> int | None:
        """The server's pid from ``postmaster.pid``, or None once it is gone."""
        try:
            with open(os.path.join(self.datadir, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    @classmethod
    def start(cls) -> PostgresCluster:
        """initdb, start on a free loopback port, create the database; raise on failure."""
        why = unavailable()
        if why is not None:
            raise RuntimeError(why)
        bindir = _bindir()
        assert bindir is not None
        user = "postgres" if os.geteuid() == 0 else None
        root = tempfile.mkdtemp(prefix="storm-pg-")
        datadir = os.path.join(root, "data")
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WATCHER,
                str(os.getpid()),
                user or "",
                f"{bindir}/pg_ctl",
                datadir,
            ],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        cluster = cls(root, datadir, 0, user, bindir, watcher)
        try:
            cluster._run("initdb", "-D", datadir, "-U", "postgres", "--auth=trust", "-E", "UTF8")
            for _attempt in range(3):
                cluster.port = _free_port()
                options = (
                    f"-k {root} -h 127.0.0.1 -p {cluster.port} -c max_connections={MAX_CONNECTIONS}"
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                )
                started = cluster._run(
                    "pg_ctl", "start", "-D", datadir, "-w", "-t", "30", "-s",
                    "-l", os.path.join(root, "log"), "-o", options,
                    check=False,
                )  # fmt: skip
                if started.returncode == 0:
                    break
            else:
                raise RuntimeError(f"pg_ctl start failed: {cluster.log_tail()}")
            cluster._run(
                "createdb", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", DATABASE
            )
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = [f"{self.bindir}/{tool}", *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(
            command,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the server it starts is out of reach of the terminal's Ctrl-C
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stdout.decode(errors='replace')[-2000:]}"
            )
        return done

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        with contextlib.suppress(OSError), open(os.path.join(self.root, "log")) as f:
            return f.read()[-2000:]
        return "(no log)"

    def stop(self) -> None:
        """Stop the server and remove its directory (through the watcher, which waits)."""
        if self.watcher.stdin is not None and not self.watcher.stdin.closed:
            self.watcher.stdin.close()
        try:
            self.watcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.watcher.kill()
            self.watcher.wait()
        shutil.rmtree(self.root, ignore_errors=True)
