"""``serve --workers N``: N authority processes sharing one port, started and stopped together.

One Python process runs on one core; the kernel spreads connections over the processes that
listen on the port with SO_REUSEPORT. The workers share nothing but the database, which is
already how replicas work, so every invariant holds across them. The supervisor migrates once,
waits until every worker serves, forwards SIGTERM / SIGINT for an ordered shutdown, and starts a
new worker in place of one that died.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from dataclasses import replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from . import db, logs
from .settings import Settings

log = logging.getLogger(__name__)
RESPAWN_DELAY = 1.0


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker if the supervisor dies, even by SIGKILL (no orphans keep the port)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def _worker(settings: Settings, dsn: str, parent: int) -> None:
    import asyncio

    from . import app

    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above
        return
    logs.setup(settings.log_level, settings.log_format)
    asyncio.run(app.serve(settings, dsn, reuse_port=True))


def _hold_port(listen: str) -> tuple[socket.socket, int]:
    """Bind (without listening) with SO_REUSEPORT, so that port 0 becomes one port for every worker."""
    host, _, port = listen.rpartition(":")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), int(port)))
    return sock, sock.getsockname()[1]


def _metrics_listen(listen: str, index: int) -> str:
    """Worker ``index`` exports its metrics on the metrics port + index: each worker is a scrape
    target of its own (its counters are its own), not one port shared at random."""
    host, _, port = listen.rpartition(":")
    if not listen or int(port) == 0:
        return listen
    return f"{host}:{int(port) + index}"


class Supervisor:
    def __init__(self, settings: Settings, dsn: str) -> None:
        self.settings = settings
        self.dsn = dsn
        self.stopping = False
        self._ctx = multiprocessing.get_context("spawn")
        self._dir = Path(tempfile.mkdtemp(prefix="agentbudget-workers-"))

    def _start(self, index: int, listen: str) -> BaseProcess:
        ready = self._dir / f"worker-{index}.port"
        ready.unlink(missing_ok=True)
        metrics = _metrics_listen(self.settings.metrics_listen, index)
        worker = replace(self.settings, listen=listen, ready_file=str(ready), workers=1, metrics_listen=metrics)
        args = (worker, self.dsn, os.getpid())
        proc = self._ctx.Process(target=_worker, args=args, name=f"agentbudget-worker-{index}")
        proc.start()
        return proc

    def _wait_ready(self, procs: dict[int, BaseProcess], deadline: float) -> None:
        pending = set(procs)
        while pending and not self.stopping:
            for index in list(pending):
                if (self._dir / f"worker-{index}.port").exists():
                    pending.discard(index)
                elif not procs[index].is_alive():
                    raise RuntimeError(f"worker {index} exited with code {procs[index].exitcode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(pending)} did not start in time")
            time.sleep(0.05)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        import asyncio

        asyncio.run(db.migrate(self.dsn))  # once, before any worker serves
        holder, port = _hold_port(self.settings.listen)
        host = self.settings.listen.rpartition(":")[0]
        listen = f"{host}:{port}"
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        procs = {i: self._start(i, listen) for i in range(self.settings.workers)}
        try:
            self._wait_ready(procs, time.monotonic() + 60)
            holder.close()  # the workers hold the port now
            log.info("serving on %s with %d workers (pids %s)", listen, len(procs), [p.pid for p in procs.values()])
            if self.settings.ready_file:
                Path(self.settings.ready_file).write_text(str(port))
            while not self.stopping:
                wait([p.sentinel for p in procs.values()], timeout=0.2)
                for index, proc in list(procs.items()):
                    if not proc.is_alive() and not self.stopping:
                        log.error(
                            "worker %d (pid %s) exited with code %s; starting another", index, proc.pid, proc.exitcode
                        )
                        time.sleep(RESPAWN_DELAY)
                        procs[index] = self._start(index, listen)
            return 0
        finally:
            holder.close()
            self._stop_all(list(procs.values()))

    def _stop_all(self, procs: list[BaseProcess]) -> None:
        log.info("stopping %d workers (grace %.1fs)", len(procs), self.settings.grace_seconds)
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: each worker drains and stops in order
        deadline = time.monotonic() + self.settings.grace_seconds + 5
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker pid %s did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join()
        log.info("stopped")


def serve(settings: Settings, dsn: str) -> int:
    return Supervisor(settings, dsn).run()
