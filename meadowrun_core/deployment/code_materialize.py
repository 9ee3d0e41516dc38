"""The instance side of the code mirror: a manifest's tree written out as directories, each
node once per instance (``<cache>/nodes/<key>``, sub-directories as symlinks to their own
nodes), packs fetched once (``<cache>/packs/<key>``); and the pack format both sides share."""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from meadowrun_core.seams.object_store import DamagedObjectError, ObjectStore, get_verified
from meadowrun_core.serialization import Signer, UnauthenticatedDataError

_PACK_MAGIC = b"MRPACK1"
_U32 = struct.Struct("!I")


@dataclass(frozen=True)
class MaterializedRoot:
    path: str
    position: str
    original: str


def pack(blobs: list[tuple[str, bytes]]) -> bytes:
    """Several signed blobs in one object: an index of (key, length), then the blobs."""
    index = json.dumps([[key, len(blob)] for key, blob in blobs]).encode()
    return b"".join([_PACK_MAGIC, _U32.pack(len(index)), index, *(blob for _, blob in blobs)])


def unpack(payload: bytes) -> dict[str, bytes]:
    if not payload.startswith(_PACK_MAGIC):
        raise ValueError("not a code pack")
    start = len(_PACK_MAGIC)
    (length,) = _U32.unpack_from(payload, start)
    offset = start + 4 + length
    blobs = {}
    for key, size in json.loads(payload[start + 4 : offset]):
        blobs[str(key)] = payload[offset : offset + size]
        offset += size
    return blobs


class _Blobs:
    """Verified blobs of one manifest: from its packs (fetched once per instance into
    ``<cache>/packs``), else one by one from the store."""

    def __init__(self, store: ObjectStore, signer: Signer, packs: list[str], cache: Path) -> None:
        self._store = store
        self._signer = signer
        self._packs = packs
        self._cache = cache
        self._blobs: dict[str, tuple[str, bytes]] | None = None

    def _load(self) -> dict[str, tuple[str, bytes]]:
        if self._blobs is None:
            self._blobs = {}
            for pack in self._packs:
                path = self._cache / pack
                try:
                    payload = self._signer.verify(path.read_bytes())
                except (OSError, UnauthenticatedDataError):
                    payload = get_verified(self._store, self._signer, pack)
                    self._cache.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{pack}.{os.getpid()}.{threading.get_ident()}")
                    tmp.write_bytes(self._signer.sign(payload))
                    os.replace(tmp, path)
                for key, blob in unpack(payload).items():
                    self._blobs.setdefault(key, (pack, blob))
        return self._blobs

    def get(self, key: str) -> bytes:
        found = self._load().get(key) if self._packs else None
        if found is None:
            return get_verified(self._store, self._signer, key)
        pack, blob = found
        try:
            return self._signer.verify(blob)
        except UnauthenticatedDataError as exc:
            raise DamagedObjectError(pack, f"blob {key} in it: {exc}") from None


def materialize(
    store: ObjectStore, signer: Signer, manifest_key: str, cache_dir: Path
) -> list[MaterializedRoot]:
    """Write the code of a manifest under ``cache_dir`` (only directories not written before);
    return one directory per mirrored ``sys.path`` entry, in order."""
    manifest = json.loads(get_verified(store, signer, manifest_key))
    nodes = cache_dir / "nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    blobs = _Blobs(store, signer, list(manifest.get("packs", [])), cache_dir / "packs")
    return [
        MaterializedRoot(
            str(_node_dir(blobs, root["tree"], nodes)), root["position"], root["original"]
        )
        for root in manifest["roots"]
    ]


def _safe(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid file name {name!r} in a code manifest")
    return name


def _node_dir(blobs: _Blobs, key: str, nodes: Path) -> Path:
    target = nodes / key
    if target.is_dir():
        return target
    node = json.loads(blobs.get(key))
    subdirs = [(name, _node_dir(blobs, sub, nodes)) for name, sub in node["d"]]
    tmp = nodes / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, file_key in node["f"]:
        (tmp / _safe(name)).write_bytes(blobs.get(file_key))
    for name, sub_dir in subdirs:
        os.symlink(os.path.join("..", sub_dir.name), tmp / _safe(name))
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another worker wrote it first; same content
    return target
