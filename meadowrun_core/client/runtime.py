"""Per-process client state: a background event loop, the client's lease, agent connections.

Sync and async entry points share one implementation: coroutines run on a private event loop
in a daemon thread, so the sync API works anywhere (scripts, Jupyter, inside other event
loops) and the async API is just an ``await`` on the same future.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import secrets
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from meadowrun_core import clouds, event_loop
from meadowrun_core.backend import Backend
from meadowrun_core.client.connection import AgentConnection
from meadowrun_core.hosts import Host, resolve_host
from meadowrun_core.seams.allocation_table import InstanceRecord

log = logging.getLogger(__name__)

# the thread that renews this client's leases in the background
LEASE_THREAD_NAME = "meadowrun-lease"
T = TypeVar("T")


class ClientRuntime:
    _current: ClientRuntime | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.client_id = f"{socket.gethostname()}-{self.pid}-{secrets.token_hex(4)}"
        self.loop = event_loop.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="meadowrun-client", daemon=True
        )
        self._thread.start()
        self._backends: dict[tuple[str, Host], Backend] = {}
        self._backends_lock = threading.Lock()
        # host=None's backend, by MEADOWRUN_HOME and MEADOWRUN_HOST, while ``_backends`` is
        # unchanged (``_generation``): most jobs name no host, and resolving and hashing the
        # default one each time was a twentieth of a warm call
        self._generation = 0
        self._default: tuple[int, tuple[str, str], Backend] | None = None
        self._connections: dict[str, AgentConnection] = {}
        self._connecting: dict[str, asyncio.Lock] = {}
        self._lease_wakeup = threading.Event()
        self._lease_thread: threading.Thread | None = None

    @classmethod
    def get(cls) -> ClientRuntime:
        with cls._lock:
            if cls._current is None or cls._current.pid != os.getpid():
                cls._current = ClientRuntime()
                atexit.register(cls._current.shutdown)
            return cls._current

    def shutdown(self) -> None:
        """At exit: release our leases (our jobs stop at once) and close connections."""
        if os.getpid() != self.pid:
            return
        self.forget_backends()

        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(stop()).result(timeout=2)
        except Exception:
            log.debug("client loop did not stop cleanly", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)

    # --- bridging ----------------------------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = self.submit(coro)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()  # the coroutine's cleanup cancels the remote job
            raise

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        if asyncio.get_running_loop() is self.loop:
            return await coro
        future = self.submit(coro)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    # --- backends and leases ---------------------------------------------------------
    def backend(self, host: Host | None) -> Backend:
        if host is None:
            environ = (os.environ.get("MEADOWRUN_HOME", ""), os.environ.get("MEADOWRUN_HOST", ""))
            default = self._default
            if default is not None and default[0] == self._generation and default[1] == environ:
                return default[2]
        resolved = resolve_host(host)
        key = (os.environ.get("MEADOWRUN_HOME", ""), resolved)
        with self._backends_lock:  # threads submitting their first jobs at once share one
            backend = self._backends.get(key)
            if backend is None:
                backend = open_backend(resolved)
                backend.table.renew_lease(self.client_id, self.pid, backend.settings.lease_seconds)
                self._backends[key] = backend
                self._ensure_lease_thread()
                self._lease_wakeup.set()  # renew at the new backend's (maybe shorter) interval
            if host is None:
                self._default = (self._generation, environ, backend)
        return backend

    def _ensure_lease_thread(self) -> None:
        if self._lease_thread is None:
            self._lease_thread = threading.Thread(
                target=self._renew_leases, name=LEASE_THREAD_NAME, daemon=True
            )
            self._lease_thread.start()

    def _renew_leases(self) -> None:
        """Keep our jobs alive; if this process dies, agents stop them after the lease.

        A failure is logged once (a warning, no traceback) until renewing works again; a
        backend whose state directory is gone is warned about once and no longer renewed."""
        failing: set[int] = set()
        while True:
            backends = list(self._backends.values())
            interval = min((b.settings.lease_seconds for b in backends), default=10.0) / 3
            self._lease_wakeup.wait(interval)
            self._lease_wakeup.clear()
            for backend in backends:
                if all(b is not backend for b in list(self._backends.values())):
                    continue  # forgotten while we waited: its lease was released on purpose
                try:
                    backend.table.renew_lease(
                        self.client_id, self.pid, backend.settings.lease_seconds
                    )
                except Exception as exc:
                    self._lease_failed(backend, exc, id(backend) in failing)
                    failing.add(id(backend))
                else:
                    if id(backend) in failing:
                        failing.discard(id(backend))
                        log.info("renewing the client lease on %s works again", backend.description)

    def _lease_failed(self, backend: Backend, exc: Exception, again: bool) -> None:
        if not backend.home.exists():
            log.warning(
                "the state directory %s is gone; stopped renewing this client's lease there "
                "(its jobs stop when the lease lapses). Start a new job to use a fresh one.",
                backend.home,
            )
            with self._backends_lock:
                self._backends = {k: b for k, b in self._backends.items() if b is not backend}
                self._generation += 1
        elif not again:
            log.warning(
                "could not renew the client lease on %s (%s: %s); retrying every period",
                backend.description,
                type(exc).__name__,
                exc,
            )
        else:
            log.debug("could not renew the client lease", exc_info=True)

    def forget_backends(self) -> None:
        """Release our leases and forget every backend (tests switch MEADOWRUN_HOME)."""
        for backend in self._backends.values():
            try:
                backend.table.release_lease(self.client_id)
            except Exception:
                log.debug("could not release the lease", exc_info=True)
        with self._backends_lock:
            backends = list(self._backends.values())
            self._backends.clear()
            self._generation += 1
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            self.loop.call_soon_threadsafe(conn.close)
        for backend in backends:
            self.loop.call_soon_threadsafe(backend.close)

    async def connection(self, instance: InstanceRecord, backend: Backend) -> AgentConnection:
        """One connection per instance agent, shared by every job this client runs there."""
        key = f"{backend.key}/{instance.instance_id}"
        conn = self._connections.get(key)
        if conn is not None and not conn.closed:  # (the common case: no lock to take)
            return conn
        lock = self._connecting.get(key)
        if lock is None:
            lock = self._connecting[key] = asyncio.Lock()
        async with lock:  # two jobs starting at once share one connection
            conn = self._connections.get(key)
            if conn is None or conn.closed:
                reader, writer = await backend.open_agent_stream(instance)
                conn = AgentConnection(reader, writer, backend.signer)
                self._connections[key] = conn
            return conn


def open_backend(host: Host) -> Backend:
    """The backend of a host, from the cloud registry (a cloud's SDK is imported only now)."""
    return clouds.of_host(host).open_backend(host)
