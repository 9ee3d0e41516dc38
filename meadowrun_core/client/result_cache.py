"""Result caching (``cache=True``, Reflow's incremental re-run): a call whose function,
deployment and arguments were run to success before returns the stored result, and nothing
is launched for it.

A call's key is the SHA-256 of what decides its result:

- the function: the content key of its signed pickle, as ``upload_function`` stored it (its
  code and captured values), or the import path of a function given by name;
- the deployment: interpreter, environment variables, git commit, and the content of the
  mirrored code (the code manifest's trees, not the manifest's own key, which also lists the
  upload packs of one client process), so changed code (also that of a function pickled by
  reference) runs again;
- the pickled arguments (equal values that pickle differently, e.g. sets of strings in two
  processes, are different calls).

A successful result is stored as soon as it arrives, under ``result-cache/<key>`` in the
cloud's object store (a named object), signed with the cluster key together with its key: a
copy moved under another key fails verification, and nothing is unpickled before it
verifies (one that does not is logged and the call runs again). Failures are never stored.
Entries live as long as the store keeps objects: 7 days after they were written (the S3
bucket's lifecycle rule; the local collector). ``meadowrun cache clear`` empties it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import pickle
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from meadowrun_core.deployment.spec import PreparedDeployment
from meadowrun_core.exceptions import BadInputError, TaskResult
from meadowrun_core.seams.cloud import CloudSeams
from meadowrun_core.seams.object_store import ObjectStore, get_verified
from meadowrun_core.serialization import Signer, UnauthenticatedDataError, dumps_fast

log = logging.getLogger(__name__)

CACHE_FOLDER = "result-cache"
_FORMAT = "meadowrun-result-cache-1"
_THREADS = 16  # lookups and stores at once (on S3 each is one request)
_SERIAL = 32  # fewer keys than this are looked up or stored without threads
_MISS = object()
_T = TypeVar("_T")
_R = TypeVar("_R")

# manifest key -> hash of its trees (manifests are immutable, content-addressed)
_code_identities: dict[str, str] = {}
_code_lock = threading.Lock()


def check_cache_flag(cache: object, job_key: str | None = None) -> bool:
    """``cache`` as given, checked before anything is uploaded."""
    if not isinstance(cache, bool):
        raise BadInputError(f"cache must be True or False, got {cache!r}")
    if cache and job_key is not None:
        raise BadInputError(
            "cache=True cannot be combined with job_key: a keyed job's result is kept under its "
            "key (attach_job). Drop job_key to use the result cache, or cache to key the job"
        )
    return cache


class ResultCache:
    """The stored results of one function on one deployment, keyed by each call's arguments."""

    def __init__(self, store: ObjectStore, signer: Signer, call_hash: str) -> None:
        self._store = store
        self._signer = signer
        self._call_hash = call_hash

    @classmethod
    def for_call(
        cls,
        cloud: CloudSeams,
        kind: str,
        function_ref: dict[str, str],
        deployment: PreparedDeployment,
    ) -> ResultCache:
        """``kind`` tells calls apart whose arguments are pickled differently (``function``:
        ``(args, kwargs)``; ``map``: one element)."""
        function_id = function_ref.get("function_key") or f"name:{function_ref['function_name']}"
        deployed = deployment_hash(cloud.store, cloud.signer, deployment)
        call = "\0".join((_FORMAT, kind, function_id, deployed))
        return cls(cloud.store, cloud.signer, hashlib.sha256(call.encode()).hexdigest())

    def key(self, arguments: bytes) -> str:
        """The key of a call with these pickled arguments."""
        digest = hashlib.sha256(self._call_hash.encode())
        digest.update(hashlib.sha256(arguments).digest())
        return digest.hexdigest()

    def lookup(self, keys: Sequence[str]) -> dict[int, Any]:
        """The stored result of each key found, by its position in ``keys``; a key with no
        entry, or one that does not verify or load, is absent."""
        values = _each(self._get, keys)
        return {i: v for i, v in enumerate(values) if v is not _MISS}

    def _get(self, key: str) -> Any:
        try:
            blob = self._store.get_named(_name(key))
        except KeyError:
            return _MISS
        header = f"{key}\n".encode()
        try:
            payload = self._signer.verify(blob)
        except UnauthenticatedDataError as exc:
            log.warning("cached result %s does not verify (%s); running the call again", key, exc)
            return _MISS
        if not payload.startswith(header):
            log.warning("cached result %s was stored for another call; running it again", key)
            return _MISS
        try:
            return pickle.loads(memoryview(payload)[len(header) :])
        except Exception as exc:
            log.warning("cached result %s cannot be loaded here (%r); running it again", key, exc)
            return _MISS

    def store(self, results: Sequence[tuple[str, bytes]]) -> None:
        """Store pickled successful results, ``(key, payload)``. A failure to store is logged,
        not raised: the results themselves are not lost, only not cached."""
        _each(self._put, results)

    def _put(self, result: tuple[str, bytes]) -> None:
        key, payload = result
        blob = self._signer.sign(f"{key}\n".encode() + payload)
        try:
            self._store.put_named(_name(key), blob)
        except Exception as exc:
            log.warning("could not store result %s in the result cache: %r", key, exc)


def _each(action: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``action`` of every item, in order; several threads at a time when there are many."""
    if len(items) < _SERIAL:
        return [action(item) for item in items]
    step = -(-len(items) // _THREADS)
    chunks = [items[i : i + step] for i in range(0, len(items), step)]
    with ThreadPoolExecutor(len(chunks), thread_name_prefix="result-cache") as pool:
        done = pool.map(lambda chunk: [action(item) for item in chunk], chunks)
        return [value for chunk in done for value in chunk]


def _name(key: str) -> str:
    return f"{CACHE_FOLDER}/{key[:2]}/{key[2:]}"


def deployment_hash(store: ObjectStore, signer: Signer, deployment: PreparedDeployment) -> str:
    """What of a deployment decides a result, hashed; the code by content (see module doc)."""
    data = deployment.to_json()
    manifest = data.pop("code_manifest", None)
    data["code"] = _code_identity(store, signer, manifest) if manifest else None
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _code_identity(store: ObjectStore, signer: Signer, manifest_key: str) -> str:
    with _code_lock:
        known = _code_identities.get(manifest_key)
    if known is not None:
        return known
    manifest = json.loads(get_verified(store, signer, manifest_key))
    roots = json.dumps(manifest["roots"], sort_keys=True).encode()
    identity = hashlib.sha256(roots).hexdigest()
    with _code_lock:
        if len(_code_identities) > 1024:
            _code_identities.clear()
        _code_identities[manifest_key] = identity
    return identity


async def run_and_store(cache: ResultCache, key: str, job: Coroutine[Any, Any, Any]) -> Any:
    """Run a single job; store its result (it returned, so it succeeded) before returning it."""
    value = await job
    try:
        payload = dumps_fast(value)
    except Exception as exc:
        log.warning("the result cannot be pickled, so it is not cached: %r", exc)
        return value
    await asyncio.to_thread(cache.store, [(key, payload)])
    return value


async def cached_value(value: Any, description: str) -> Any:
    """A job that ran before: its stored result."""
    log.info("%s: returning the cached result; nothing runs", description)
    return value


class MapCache:
    """A map's view of the cache: each task's key, the results found before anything runs,
    and storing each new success as it arrives (so a re-run after a crash or Ctrl-C runs
    only what had not finished)."""

    def __init__(self, cache: ResultCache, arguments: Sequence[bytes]) -> None:
        self._cache = cache
        self.keys = [cache.key(a) for a in arguments]

    @classmethod
    def open(
        cls,
        cloud: CloudSeams,
        function_ref: dict[str, str],
        deployment: PreparedDeployment,
        arguments: Sequence[bytes],
    ) -> MapCache:
        """The cache of a map whose tasks have these pickled arguments."""
        return cls(ResultCache.for_call(cloud, "map", function_ref, deployment), arguments)

    def found(self, description: str) -> list[TaskResult]:
        """The tasks whose results are stored, as results marked ``cached``."""
        found = sorted(self._cache.lookup(self.keys).items())
        if found:
            log.info(
                "%s: %d of %d task(s) found in the result cache; running the other %d",
                description,
                len(found),
                len(self.keys),
                len(self.keys) - len(found),
            )
        return [TaskResult(task_id, True, value, cached=True) for task_id, value in found]

    def store(self, results: Sequence[tuple[int, bytes]]) -> None:
        """Store ``(task_id, pickled result)`` of successful tasks."""
        self._cache.store([(self.keys[task_id], payload) for task_id, payload in results])

    def of_tasks(self, task_ids: Sequence[int]) -> MapCache:
        """The view of a map made of these tasks of this one (numbered from 0 in this
        order), e.g. the wave that runs tasks again with more memory."""
        view = MapCache.__new__(MapCache)
        view._cache, view.keys = self._cache, [self.keys[i] for i in task_ids]
        return view


@dataclass(frozen=True)
class CacheContents:
    entries: int
    bytes: int
    oldest: float | None
    newest: float | None


def contents(store: ObjectStore) -> CacheContents:
    """How many results the cache holds, their size and the times they were stored."""
    entries = size = 0
    oldest: float | None = None
    newest: float | None = None
    for item in store.list_named(CACHE_FOLDER):
        entries += 1
        size += item.size
        oldest = item.stored_at if oldest is None else min(oldest, item.stored_at)
        newest = item.stored_at if newest is None else max(newest, item.stored_at)
    return CacheContents(entries, size, oldest, newest)


def clear(store: ObjectStore, older_than_seconds: float | None = None) -> tuple[int, int]:
    """Delete the cached results (only those stored over ``older_than_seconds`` ago, when
    given); return how many and their bytes."""
    cutoff = None if older_than_seconds is None else time.time() - older_than_seconds
    doomed = [
        item for item in store.list_named(CACHE_FOLDER) if cutoff is None or item.stored_at < cutoff
    ]
    store.delete_named([item.name for item in doomed])
    return len(doomed), sum(item.size for item in doomed)
