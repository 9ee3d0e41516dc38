"""The worker process: runs the user's calls one after another for its agent.

It speaks frames over a socket pair inherited from the agent (its only channel, so it is
trusted). The agent reuses an idle worker for the next job with the same deployment, which is
what keeps a warm ``run_function`` in the low milliseconds.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, cast

import cloudpickle

from meadowrun_core import clouds, frames, job_context
from meadowrun_core.config import meadowrun_home
from meadowrun_core.deployment.code_materialize import materialize
from meadowrun_core.function_names import import_function
from meadowrun_core.protocol import read_frame_sync, send_frame_sync
from meadowrun_core.seams.object_store import ObjectStore, get_verified
from meadowrun_core.serialization import Signer, dumps_fast


def _describe_failure(exc: BaseException) -> bytes:
    """Pickle (exception or None, traceback text); the exception may not be picklable."""
    text = "".join(traceback.format_exception(exc))
    try:
        data: bytes = cloudpickle.dumps((exc, text))
    except Exception:
        data = cloudpickle.dumps((None, f"{text}\n(the exception could not be pickled)"))
    return data


class Worker:
    def __init__(self, sock: socket.socket, signer: Signer, store: ObjectStore) -> None:
        self._send_lock = threading.Lock()  # reports may come from the job's own threads
        self._sock = sock
        self._signer = signer
        self._store = store
        self._functions: dict[str, Any] = {}
        self._code_loaded: str | None = None
        self._mirrors: dict[str, str] = {}  # a caller's directory -> its mirror here

    def load_code(self, manifest_key: str | None, cache_dir: Path) -> None:
        if manifest_key is None or manifest_key == self._code_loaded:
            return
        cache_dir.mkdir(parents=True, exist_ok=True)
        front: list[str] = []
        self._mirrors = {}
        for root in materialize(self._store, self._signer, manifest_key, cache_dir):
            if root.original:
                self._mirrors[root.original] = root.path
            # restore the caller's order: an entry this interpreter also has (an editable
            # install's path) is replaced in place, the others go where they stood
            if root.original and root.original in sys.path:
                sys.path[sys.path.index(root.original)] = root.path
            elif root.position == "front":
                front.append(root.path)
            else:
                sys.path.append(root.path)
        sys.path[0:0] = front
        importlib.invalidate_caches()
        self._code_loaded = manifest_key

    def _function(self, function: frames.FunctionRef) -> Any:
        if "function_name" in function:
            name = function["function_name"]
            if name not in self._functions:
                self._functions[name] = import_function(name)
            return self._functions[name]
        key = function["function_key"]
        if key not in self._functions:
            self._functions[key] = pickle.loads(get_verified(self._store, self._signer, key))
        return self._functions[key]

    def call(
        self,
        function: frames.FunctionRef,
        blob: bytes,
        *,
        single_argument: bool = False,
        caller_cwd: str | None = None,
        workdir: str | None = None,
    ) -> tuple[frames.Result, bytes]:
        """Run one call (a batch task's blob is its one argument, a call's its ``(args,
        kwargs)``); never raises, failures are reported as data."""
        try:
            self._enter_workdir(caller_cwd, workdir)
            function_object = self._function(function)
            if single_argument:
                args, kwargs = (pickle.loads(blob),), {}
            else:
                args, kwargs = pickle.loads(blob)
        except BaseException as exc:
            return {"type": "result", "ok": False, "stage": "load"}, _describe_failure(exc)
        try:
            result = function_object(*args, **kwargs)
        except MemoryError as exc:
            return {"type": "result", "ok": False, "stage": "memory"}, _describe_failure(exc)
        except BaseException as exc:
            return {"type": "result", "ok": False, "stage": "run"}, _describe_failure(exc)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            return {"type": "result", "ok": True}, dumps_fast(result)
        except BaseException as exc:
            error = TypeError(
                f"the result of type {type(result).__name__} cannot be pickled to send it back: "
                f"{exc}. Return plain data (or write it to storage and return a path)."
            )
            return {"type": "result", "ok": False, "stage": "result"}, _describe_failure(error)

    def _enter_workdir(self, caller_cwd: str | None, workdir: str | None) -> None:
        """Work in the mirror of the caller's working directory, as a command does (so
        relative paths mean what they mean to the caller), else in the agent's choice."""
        target = self._mirrors.get(caller_cwd) if caller_cwd else None
        target = target or workdir
        if target and target != _current_directory():
            os.chdir(target)  # (a task that changed directory itself is put back, too)

    def send(self, header: frames.WorkerFrame, blob: bytes = b"") -> None:
        with self._send_lock:
            send_frame_sync(self._sock, self._signer, header, blob)

    def report(self, value: Any) -> None:
        report: frames.WorkerReport = {"type": "report"}
        self.send(report, dumps_fast(value))

    def serve(self) -> None:
        job_context.set_reporter(self.report)
        # log records travel to the client as records (their own level and logger), not as
        # text on stderr; INFO and up, as a client's logging shows by default once configured
        root = logging.getLogger()
        root.addHandler(job_context.forwarder)
        if root.level == logging.WARNING:
            root.setLevel(logging.INFO)
        ready: frames.Ready = {"type": "ready", "pid": os.getpid()}
        self.send(ready)
        while True:
            try:
                header, blob = read_frame_sync(self._sock, self._signer)
            except EOFError:
                _remove_pid_sources()
                return  # the agent went away; so do we
            if header["type"] == "exit":
                _remove_pid_sources()
                return
            if header["type"] == "load_code":
                self._load_code(cast(frames.LoadCode, header))
            elif header["type"] == "call_batch":
                self._call_batch(cast(frames.CallBatch, header), blob)
            elif header["type"] == "call":
                self._call(cast(frames.Call, header), blob)

    def _load_code(self, header: frames.LoadCode) -> None:
        try:
            self.load_code(header["manifest"], Path(header["cache_dir"]))
            loaded: frames.CodeLoaded = {"type": "code_loaded", "ok": True}
            self.send(loaded)
        except BaseException as exc:
            failed: frames.CodeLoaded = {"type": "code_loaded", "ok": False}
            self.send(failed, _describe_failure(exc))

    def _call_batch(self, header: frames.CallBatch, blob: bytes) -> None:
        pid_file = header.get("pid_file")
        if pid_file:
            _write_pid_file(Path(pid_file))
        function: frames.FunctionRef = {"function_key": header["function_key"]}
        for argument in pickle.loads(blob):
            started = time.perf_counter()
            result, result_blob = self.call(function, argument, single_argument=True)
            result["seconds"] = time.perf_counter() - started
            self.send(result, result_blob)

    def _call(self, header: frames.Call, blob: bytes) -> None:
        # (no PID file: the agent writes a function job's once it has run a while)
        result, result_blob = self.call(
            header, blob, caller_cwd=header.get("caller_cwd"), workdir=header.get("workdir")
        )
        result["call_id"] = header["call_id"]
        self.send(result, result_blob)


def _current_directory() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # it was deleted
        return None


# the folders where this process wrote its own PID file (``_write_pid_file``)
_pid_sources: dict[Path, Path] = {}


def _write_pid_file(path: Path) -> None:
    """Name this process in ``path`` for the reconciler. Creating a file cost 0.1 to 0.7 ms
    of ext4 journal work per call here, a hard link about 25 us: so the PID is written once
    per process and folder, to a hidden file the reconciler's ``*.pid`` glob skips, and each
    job's PID file is a link to it (the same content and mtime, which ``pid_is_alive``
    compares with the process's start)."""
    source = _pid_sources.get(path.parent)
    if source is None:  # written by this process: never trust one left by a reused PID
        source = path.with_name(f".worker-{os.getpid()}")
        _replace_text(source, str(os.getpid()))
        _pid_sources[path.parent] = source
    try:
        os.link(source, path)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if os.path.samefile(path, source):  # a map slot's earlier batch named us already
                return
        path.unlink(missing_ok=True)  # an earlier attempt of the same job
        os.link(source, path)
    except OSError:  # no hard links here, or the source was removed: written the old way
        _pid_sources.pop(path.parent, None)  # (the next call writes a new source)
        _replace_text(path, str(os.getpid()))


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove_pid_sources() -> None:
    for source in _pid_sources.values():
        source.unlink(missing_ok=True)


def _die_with_parent() -> None:
    """Linux: be killed when the agent dies, as every process dies with a real instance."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main() -> None:
    _die_with_parent()
    sock = socket.socket(fileno=int(os.environ.pop("MEADOWRUN_WORKER_FD")))
    # the agent's home as it is, and its key: a home deleted under the agent is not recreated
    env_home = os.environ.get("MEADOWRUN_HOME")
    home = Path(env_home) if env_home else meadowrun_home()
    try:
        key = (home / "cluster.key").read_bytes()
    except FileNotFoundError:
        sys.exit(f"the cluster key {home / 'cluster.key'} is gone; this worker cannot start")
    Worker(sock, Signer(key), clouds.current().worker_object_store(home)).serve()


if __name__ == "__main__":
    main()
