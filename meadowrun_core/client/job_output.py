"""A job's output on the client: its stdout and stderr, and the records it logged, shown
here as they arrive."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

from meadowrun_core.job_context import ForwardedLog

job_log = logging.getLogger("meadowrun_core.job")


class OutputLogger:
    """Logs a job's remote stdout and stderr line by line, prefixed with the job id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._partial: dict[str, bytes] = {}

    def write(self, stream: str, data: bytes) -> None:
        buffered = self._partial.get(stream, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._partial[stream] = rest
        for line in lines:
            self._emit(stream, line)

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._emit(stream, rest)
        self._partial.clear()

    def _emit(self, stream: str, line: bytes) -> None:
        text = line.decode(errors="replace")
        if not job_log.hasHandlers():
            # logging is not configured here: show the job's output anyway, as a local
            # print would be (and as Ray does), rather than losing it below WARNING
            # (through tqdm, which keeps a run_map progress bar intact below the line)
            tqdm.write(
                f"[{self.job_id}] {text}", file=sys.stderr if stream == "stderr" else sys.stdout
            )
            return
        level = logging.INFO if stream == "stdout" else logging.WARNING
        job_log.log(level, "[%s] %s", self.job_id, text)

    def log_record(self, forwarded: ForwardedLog) -> None:
        """A record the job logged, at its own level, on ``meadowrun_core.job.<its logger>``
        (its original time kept): level filters and alerts work as for local records, and
        the client's own handlers for that library (Prefect's API, Dask's) are not fed
        records they already had from the instance."""
        logger = logging.getLogger(f"{job_log.name}.{forwarded.name}")
        if not logger.isEnabledFor(forwarded.levelno):
            return
        message = f"[{self.job_id}] {forwarded.message}"
        if forwarded.exc_text:
            message += "\n" + forwarded.exc_text
        record = logger.makeRecord(
            logger.name,
            forwarded.levelno,
            "(remote)",
            0,
            message,
            (),
            None,
            extra={"job_id": self.job_id, "remote_logger": forwarded.name},
        )
        record.created = forwarded.created
        record.msecs = (forwarded.created % 1) * 1000
        logger.handle(record)
