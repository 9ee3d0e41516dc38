"""The agent's door: a connection is served only after its signed hello verified.

Before that, a peer can make the agent read at most ``HELLO_MAX_FRAME`` bytes, for at most
``HELLO_TIMEOUT_SECONDS``, and at most ``MAX_UNAUTHENTICATED`` such peers are waited on at once
(more are closed at once), so junk streamed at the agent's port costs it almost nothing.
Refusals are logged once, then summarised at most every ``LOG_EVERY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from meadowrun_core.protocol import FrameTooLargeError, HelloGuard
from meadowrun_core.serialization import Signer, UnauthenticatedDataError

log = logging.getLogger("meadowrun_core.agent")

HELLO_TIMEOUT_SECONDS = 10.0
MAX_UNAUTHENTICATED = 32
LOG_EVERY_SECONDS = 30.0


class ConnectionGate:
    def __init__(
        self,
        signer: Signer,
        hello_timeout: float = HELLO_TIMEOUT_SECONDS,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
    ) -> None:
        self._signer = signer
        self._guard = HelloGuard()
        self._timeout = hello_timeout
        self._max = max_unauthenticated
        self.unauthenticated = 0
        self.refused = 0
        self._unlogged = 0
        self._last_log = -LOG_EVERY_SECONDS

    async def admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """True once the peer's hello verified; else the connection is closed, False."""
        if self.unauthenticated >= self._max:
            self._refuse(writer, f"over {self._max} connections waiting to authenticate")
            return False
        self.unauthenticated += 1
        try:
            await asyncio.wait_for(self._guard.read_hello(reader, self._signer), self._timeout)
            return True
        except TimeoutError:
            self._refuse(writer, f"no hello within {self._timeout:g} s")
        except (asyncio.IncompleteReadError, ConnectionError):
            self._refuse(writer, "closed before authenticating")
        except FrameTooLargeError as exc:
            self._refuse(writer, f"first frame too large ({exc})")
        except (UnauthenticatedDataError, ValueError) as exc:  # ValueError: bad JSON
            self._refuse(writer, f"failed authentication ({exc})")
        finally:
            self.unauthenticated -= 1
        return False

    def _refuse(self, writer: asyncio.StreamWriter, reason: str) -> None:
        writer.close()
        self.refused += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            peer = writer.get_extra_info("peername")
            log.warning(
                "refused %d unauthenticated connection(s) (latest from %s: %s)",
                self._unlogged,
                json.dumps(peer) if peer else "?",
                reason,
            )
            self._unlogged = 0
            self._last_log = now
