"""What a running job can learn about its instance, on any cloud."""

from __future__ import annotations

import os
from pathlib import Path

from meadowrun_core import clouds


def current_instance_id() -> str | None:
    """The id of the instance this code runs on, or None outside a meadowrun job."""
    return os.environ.get("MEADOWRUN_INSTANCE_ID")


def interruption_notice() -> float | None:
    """When this job's instance will be reclaimed (epoch seconds), if a spot interruption
    notice has been given; None otherwise, and outside a meadowrun job. Cheap to poll."""
    instance_id = current_instance_id()
    if instance_id is None:
        return None
    notice_file = os.environ.get("MEADOWRUN_INTERRUPTION_FILE")
    if notice_file:  # written by the agent as soon as it hears of a notice, on every cloud
        try:
            return float(Path(notice_file).read_text())
        except (OSError, ValueError):
            pass
    return clouds.current().job_interruption_notice(instance_id)
