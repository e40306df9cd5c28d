"""Authority servers as real OS processes, for multi-replica, load and crash tests.

    with ServerProcess(dsn) as server:          # started, migrated, serving
        channel = grpc.aio.insecure_channel(server.address)
        ...
        server.kill()                            # SIGKILL: no graceful anything

The server writes its bound port into a ready file once it serves; we poll that file with a
deadline (and give up early, with the server's log, if the process exits first).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def agentbudget_executable() -> str:
    beside = Path(sys.executable).with_name("agentbudget")
    if beside.exists():
        return str(beside)
    found = shutil.which("agentbudget")
    if found is None:
        raise RuntimeError("the agentbudget command is not installed")
    return found


class ServerProcess:
    """One ``agentbudget serve`` process on ``dsn``, listening on a free port of 127.0.0.1."""

    def __init__(
        self,
        dsn: str,
        *,
        sweep_interval: float = 0.2,
        min_ttl: float = 0.2,
        extra_args: tuple[str, ...] = (),
        name: str = "server",
    ) -> None:
        self.dsn = dsn
        self.name = name
        self._dir = Path(tempfile.mkdtemp(prefix=f"agentbudget-{name}-"))
        self.ready_file = self._dir / "ready"
        self.log_file = self._dir / "server.log"
        self.args = [
            agentbudget_executable(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--database-url",
            dsn,
            "--ready-file",
            str(self.ready_file),
            "--sweep-interval-seconds",
            str(sweep_interval),
            "--min-ttl-seconds",
            str(min_ttl),
            "--log-level",
            "WARNING",
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process without waiting for it to serve."""
        assert self.proc is None, "already started"
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _poll_ready(self) -> bool:
        assert self.proc is not None
        try:
            text = self.ready_file.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text.isdigit():  # the file may be seen before its content is written
            self._port = int(text)
            return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before serving:\n{self.log()}")
        return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while not self._poll_ready():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} not serving after {timeout}s:\n{self.log()}")
            time.sleep(0.02)
        return self

    async def wait_ready_async(self, timeout: float = READY_TIMEOUT) -> ServerProcess:
        """As wait_ready, without blocking the event loop (load keeps running meanwhile)."""
        deadline = time.monotonic() + timeout
        while not self._poll_ready():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} not serving after {timeout}s:\n{self.log()}")
            await asyncio.sleep(0.02)
        return self

    def start(self, timeout: float = READY_TIMEOUT) -> ServerProcess:
        self.spawn()
        return self.wait_ready(timeout)

    async def start_async(self, timeout: float = READY_TIMEOUT) -> ServerProcess:
        self.spawn()
        return await self.wait_ready_async(timeout)

    def kill(self) -> None:
        """SIGKILL to its whole process group (workers included), as a crash or OOM kill would."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: start_new_session
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait for the graceful shutdown; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    # -- facts ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} is not serving yet")
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.alive():
                self.stop()
        finally:
            self.cleanup()


def start_all(servers: list[ServerProcess], timeout: float = READY_TIMEOUT) -> list[ServerProcess]:
    """Spawn every server first, then wait for each: they start (and migrate) side by side."""
    try:
        for s in servers:
            s.spawn()
        for s in servers:
            s.wait_ready(timeout)
    except BaseException:
        for s in servers:
            s.cleanup()
        raise
    return servers


__all__ = ["ServerProcess", "agentbudget_executable", "start_all"]
