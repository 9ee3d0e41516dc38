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
import traceback
from pathlib import Path
from typing import Any

import cloudpickle

from meadowrun_core import job_context
from meadowrun_core.config import meadowrun_home
from meadowrun_core.deployment.code_mirror import materialize
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.protocol import read_frame_sync, send_frame_sync
from meadowrun_core.seams.object_store import ObjectStore, get_verified
from meadowrun_core.serialization import Signer, dumps_fast


def _import_function(qualified_name: str) -> Any:
    module_name, _, attr = qualified_name.rpartition(".")
    if not module_name:
        raise ValueError(f"function name {qualified_name!r} must be 'package.module.function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"cannot import module {module_name!r} for {qualified_name!r} on the worker: {exc}. "
            "Is the code part of the deployment (Deployment.mirror_local or git_repo)?"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AttributeError(
            f"module {module_name!r} has no attribute {attr!r} (asked for {qualified_name!r})"
        ) from None


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

    def load_code(self, manifest_key: str | None, cache_dir: Path) -> None:
        if manifest_key is None or manifest_key == self._code_loaded:
            return
        cache_dir.mkdir(parents=True, exist_ok=True)
        front: list[str] = []
        for root in materialize(self._store, self._signer, manifest_key, cache_dir):
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

    def _function(self, header: dict[str, Any]) -> Any:
        if "function_name" in header:
            name = header["function_name"]
            if name not in self._functions:
                self._functions[name] = _import_function(name)
            return self._functions[name]
        key = header["function_key"]
        if key not in self._functions:
            self._functions[key] = pickle.loads(get_verified(self._store, self._signer, key))
        return self._functions[key]

    def call(self, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        """Run one call; never raises, failures are reported as data."""
        try:
            function = self._function(header)
            if header.get("single_argument"):
                args, kwargs = (pickle.loads(blob),), {}
            else:
                args, kwargs = pickle.loads(blob)
        except BaseException as exc:
            return {"ok": False, "stage": "load"}, _describe_failure(exc)
        try:
            result = function(*args, **kwargs)
        except MemoryError as exc:
            return {"ok": False, "stage": "memory"}, _describe_failure(exc)
        except BaseException as exc:
            return {"ok": False, "stage": "run"}, _describe_failure(exc)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            return {"ok": True}, dumps_fast(result)
        except BaseException as exc:
            error = TypeError(
                f"the result of type {type(result).__name__} cannot be pickled to send it back: "
                f"{exc}. Return plain data (or write it to storage and return a path)."
            )
            return {"ok": False, "stage": "result"}, _describe_failure(error)

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        with self._send_lock:
            send_frame_sync(self._sock, self._signer, header, blob)

    def report(self, value: Any) -> None:
        self.send({"type": "report"}, dumps_fast(value))

    def serve(self) -> None:
        job_context.set_reporter(self.report)
        # log records travel to the client as records (their own level and logger), not as
        # text on stderr; INFO and up, as a client's logging shows by default once configured
        root = logging.getLogger()
        root.addHandler(job_context.forwarder)
        if root.level == logging.WARNING:
            root.setLevel(logging.INFO)
        self.send({"type": "ready", "pid": os.getpid()})
        while True:
            try:
                header, blob = read_frame_sync(self._sock, self._signer)
            except EOFError:
                return  # the agent went away; so do we
            if header["type"] == "exit":
                return
            if header["type"] == "load_code":
                try:
                    self.load_code(header["manifest"], Path(header["cache_dir"]))
                    reply: dict[str, Any] = {"type": "code_loaded", "ok": True}
                    self.send(reply)
                except BaseException as exc:
                    self.send({"type": "code_loaded", "ok": False}, _describe_failure(exc))
                continue
            if header["type"] == "call_batch":
                pid_file = header.get("pid_file")
                if pid_file:
                    _write_pid_file(Path(pid_file))
                for argument in pickle.loads(blob):
                    task = {"function_key": header["function_key"], "single_argument": True}
                    result_header, result_blob = self.call(task, argument)
                    result_header["type"] = "result"
                    self.send(result_header, result_blob)
                continue
            if header["type"] == "call":
                pid_file = header.get("pid_file")
                if pid_file:
                    _write_pid_file(Path(pid_file))
                result_header, result_blob = self.call(header, blob)
                result_header.update(type="result", call_id=header["call_id"])
                self.send(result_header, result_blob)


def _write_pid_file(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)


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
    Worker(sock, Signer(key), _object_store(home)).serve()


def _object_store(home: Path) -> ObjectStore:
    """The instance's object store, as its agent described it in MEADOWRUN_OBJECT_STORE
    (``s3://bucket/prefix`` on AWS); the local cloud's files otherwise."""
    url = os.environ.get("MEADOWRUN_OBJECT_STORE", "")
    if url.startswith("s3://"):
        from meadowrun_core.aws.clients import aws_client
        from meadowrun_core.aws.s3_object_store import S3ObjectStore

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        s3 = aws_client("s3", os.environ.get("MEADOWRUN_AWS_REGION"))
        return S3ObjectStore(s3, bucket, prefix)
    return FileObjectStore(home / "objects")


if __name__ == "__main__":
    main()
