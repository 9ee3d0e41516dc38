"""Azurite, the real Azure Storage emulator (Table, Queue, Blob), for the tests: one server per
test session on 127.0.0.1 (or one on an address of a test's choosing, e.g. a twin
network's gateway, with ``AzuriteServer(workdir, host)``), on free ports, in memory, with no
telemetry.

It runs from the npm project in ``tests/azurite-npm`` (azurite pinned by its
``package-lock.json``), which ``scripts/setup`` installs with ``npm ci``. A test that needs
Azurite fails, never skips, when it is missing.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from meadowrun_core.azure.storage_account import StorageAccount

log = logging.getLogger(__name__)

NPM_PROJECT = Path(__file__).resolve().parent / "azurite-npm"
AZURITE_JS = NPM_PROJECT / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"
# Azurite's development account: its name and key are published and the same in every
# Azurite (https://learn.microsoft.com/azure/storage/common/storage-use-azurite), not secrets.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_SECONDS = 60.0
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at (\S+)")


def development_account(table_url: str, queue_url: str = "", blob_url: str = "") -> StorageAccount:
    """The development account at these endpoints (``http://127.0.0.1:PORT/devstoreaccount1``)."""
    credential = AzureNamedKeyCredential(ACCOUNT_NAME, ACCOUNT_KEY)
    return StorageAccount(table_url, queue_url, blob_url, credential)


def _missing(what: str) -> None:
    pytest.fail(
        f"Azurite is not installed ({what}): run scripts/setup, which installs node and npm "
        "if missing and then `npm ci --prefix tests/azurite-npm`",
        pytrace=False,
    )


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: unauthenticated, it says 403)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


class AzuriteServer:
    """One Azurite process; ``urls`` maps blob, queue and table to their endpoints."""

    def __init__(
        self, workdir: Path, host: str = "127.0.0.1", debug_log: Path | None = None
    ) -> None:
        node = shutil.which("node")
        if node is None:
            _missing("no `node` on PATH")
        if not AZURITE_JS.exists():
            _missing(f"{AZURITE_JS} does not exist")
        command = [str(node), str(AZURITE_JS), "--silent", "--disableTelemetry"]
        command += ["--skipApiVersionCheck", "--inMemoryPersistence", "--extentMemoryLimit", "256"]
        for service in ("blob", "queue", "table"):
            command += [f"--{service}Host", host, f"--{service}Port", "0"]
        if debug_log is not None:  # every request it serves, logged there (for counting)
            command += ["--debug", str(debug_log)]
        self._process = subprocess.Popen(
            command,
            cwd=workdir,  # with --inMemoryPersistence it writes nothing, but never in the repo
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.urls: dict[str, str] = {}
        self._ready = threading.Event()
        self._output: list[str] = []
        threading.Thread(target=self._read_output, daemon=True).start()
        try:
            self._wait_until_it_answers()
        except BaseException:
            self.stop()
            raise

    def _read_output(self) -> None:
        """Collect the ports Azurite chose, then keep draining its output into the log."""
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._output.append(line.rstrip())
            log.debug("azurite: %s", line.rstrip())
            match = _LISTENING.search(line)
            if match:
                self.urls[match.group(1).lower()] = f"{match.group(2).rstrip('/')}/{ACCOUNT_NAME}"
                if len(self.urls) == 3:
                    self._ready.set()
        self._ready.set()  # it exited

    def _wait_until_it_answers(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        self._ready.wait(START_SECONDS)
        while time.monotonic() < deadline:
            if self._process.poll() is not None or len(self.urls) < 3:
                break
            if all(_answers(url + "?comp=list") for url in self.urls.values()):
                return
            time.sleep(0.1)
        output = "\n".join(self._output[-20:])
        pytest.fail(
            f"Azurite did not start within {START_SECONDS:.0f} s (exit status "
            f"{self._process.poll()}); its output:\n{output}",
            pytrace=False,
        )

    def account(self) -> StorageAccount:
        return development_account(self.urls["table"], self.urls["queue"], self.urls["blob"])

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageAccount]:
    """The storage account of a fresh Azurite for the whole session; each test makes its own
    uniquely named tables, queues and containers in it."""
    server = AzuriteServer(tmp_path_factory.mktemp("azurite"))
    try:
        yield server.account()
    finally:
        server.stop()
