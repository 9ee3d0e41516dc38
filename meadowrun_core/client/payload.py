"""Everything done before a job is sent: pickling with errors that name the culprit, uploading
the function and the code, validating inputs. Nothing here launches or spends anything."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle

from meadowrun_core.backend import Backend
from meadowrun_core.deployment.code_mirror import CodeMirror
from meadowrun_core.deployment.spec import Deployment, PreparedDeployment
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.object_store import content_key
from meadowrun_core.serialization import dumps_fast

log = logging.getLogger(__name__)

_mirrors: dict[str, CodeMirror] = {}
# Mirrors kept per process (each holds an inotify instance, of which a user has 128 on the
# whole machine: a process that opened one per cloud it ever used, a test run's hundreds of
# temporary homes, left every other process of the user without a watcher, rescanning its
# tree on every call). A dropped mirror only means the next upload to that cloud looks again.
MAX_MIRRORS = 4
_mirrors_lock = threading.Lock()
# Blobs this client put (functions, large arguments), kept so that a copy found damaged in
# the store can be replaced; bounded, oldest dropped first. Per cloud: key -> (blob, written).
_HELD_BYTES = 64 * 2**20
_held: dict[str, OrderedDict[str, tuple[bytes, float]]] = {}
_held_lock = threading.Lock()
clock: Callable[[], float] = time.time  # tests move it to simulate a long-lived client

FunctionRef = dict[str, str]


def check_resources(resources: Resources | None, name: str = "resources") -> Resources:
    if resources is None:
        return Resources()
    if not isinstance(resources, Resources):
        raise BadInputError(f"{name} must be meadowrun_core.Resources(...), got {resources!r}")
    return resources


def check_deployment(deployment: Deployment | None) -> Deployment:
    if deployment is None:
        return Deployment.mirror_local()
    if not isinstance(deployment, Deployment):
        raise BadInputError(
            f"deployment must be a Deployment (e.g. Deployment.mirror_local()), got {deployment!r}"
        )
    deployment.check_supported()
    return deployment


def upload_function(backend: Backend, function: Callable[..., Any] | str) -> FunctionRef:
    """A reference the worker can load: an importable name, or a signed pickle in the store."""
    if isinstance(function, str):
        module, _, attr = function.rpartition(".")
        if not module or not attr:
            raise BadInputError(
                f"function {function!r} must be a callable or a 'package.module.function' string"
            )
        return {"function_name": function}
    if not callable(function):
        raise BadInputError(f"function must be callable or a dotted name, got {function!r}")
    try:
        blob = backend.signer.dumps(function)
    except Exception as exc:
        raise BadInputError(
            f"the function {getattr(function, '__qualname__', function)!r} cannot be pickled: "
            f"{exc}. Define it at module level or pass it as 'package.module.function'."
        ) from exc
    return {"function_key": put_blob(backend, blob)}


def put_blob(backend: Backend, blob: bytes) -> str:
    """Put a signed blob, unless this client wrote it recently enough that the store still
    has it (half its expiry); keep a copy to repair it with."""
    key = content_key(blob)
    expiry = backend.store.expiry_seconds
    with _held_lock:
        held = _held.setdefault(backend.key, OrderedDict())
        known = held.get(key)
        if known is not None and (expiry is None or clock() - known[1] < expiry / 2):
            held.move_to_end(key)
            return key
    backend.store.put(blob)
    with _held_lock:
        held[key] = (blob, clock())
        held.move_to_end(key)
        total = sum(len(b) for b, _ in held.values())
        while total > _HELD_BYTES and len(held) > 1:
            _, (dropped, _) = held.popitem(last=False)
            total -= len(dropped)
    return key


def repair(backend: Backend, key: str) -> bool:
    """Replace the damaged object ``key`` from this client's own copy: a blob it holds, or
    (for code) everything its mirror wrote. False when this client never had it."""
    with _held_lock:
        held = _held.get(backend.key)
        known = held.get(key) if held is not None else None
    if known is not None:
        log.warning("object %s was damaged in the store; replacing it", key)
        backend.store.put(known[0], overwrite=True)
        return True
    with _mirrors_lock:
        mirror = _mirrors.get(backend.key)
    if mirror is not None and mirror.knows(key):
        log.warning("code object %s was damaged in the store; uploading the code again", key)
        mirror.invalidate(overwrite=True)
        return True
    return False


def pickle_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        data: bytes = cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        return data
    except Exception as exc:
        for index, value in enumerate(args):
            _check_one(value, f"positional argument {index}")
        for key, value in kwargs.items():
            _check_one(value, f"keyword argument {key!r}")
        raise BadInputError(f"the arguments cannot be pickled: {exc}") from exc


def pickle_task_argument(value: Any, task_id: int) -> bytes:
    try:
        return dumps_fast(value)
    except Exception:
        _check_one(value, f"the argument of task {task_id}")
        raise


def _check_one(value: Any, what: str) -> None:
    try:
        cloudpickle.dumps(value)
    except Exception as exc:
        raise BadInputError(
            f"{what} ({type(value).__name__}) cannot be pickled to send it to the worker: {exc}"
        ) from exc


def prepare_deployment(backend: Backend, deployment: Deployment) -> PreparedDeployment:
    from meadowrun_core.deployment.prepare import prepare

    with _mirrors_lock:
        mirror = _mirrors.get(backend.key)
        if mirror is None:  # one per cloud and process: it remembers what it uploaded
            mirror = _mirrors[backend.key] = CodeMirror(
                backend.store, backend.signer, clock=lambda: clock()
            )
            while len(_mirrors) > MAX_MIRRORS:  # the oldest: its inotify instance goes too
                _mirrors.pop(next(iter(_mirrors))).close()
    before = mirror.bytes_uploaded
    prepared = prepare(
        deployment,
        home=backend.home,
        store=backend.store,
        signer=backend.signer,
        mirror=mirror,
        local_instance=backend.instances_are_this_machine,
        secrets=backend.secrets.get,
    )
    if mirror.bytes_uploaded != before:
        log.debug("uploaded %d bytes of code", mirror.bytes_uploaded - before)
    return prepared
