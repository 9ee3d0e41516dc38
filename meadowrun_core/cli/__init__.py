"""The ``meadowrun`` command: manage clouds and show their state.

``_common`` holds the app and what commands share (choosing a cloud: ``_check_cloud``);
``manage`` sets clouds up and tears them down; ``state`` lists instances, jobs and costs;
``logs`` prints a job's output; ``cache`` shows and empties the result cache.
"""

from meadowrun_core.cli import cache, logs, manage, state
from meadowrun_core.cli._common import _check_cloud, app, unwrap_all_help

_ORDER = [
    "install", "uninstall", "clean", "instances", "jobs", "logs", "costs", "interrupt",
    "instance-types",
]  # fmt: skip
app.registered_commands.sort(
    key=lambda c: (
        _ORDER.index(c.name or c.callback.__name__)  # type: ignore[union-attr]
        if (c.name or getattr(c.callback, "__name__", "")) in _ORDER
        else len(_ORDER)
    )
)
unwrap_all_help(app)

__all__ = ["_check_cloud", "app", "cache", "logs", "manage", "state"]
