"""What a runner sends along with every task run of its flow, computed once per runner: the
options a task run gets (with the flow's ``PREFECT_*`` settings in its environment and the
flow's API reachable from instances) and Prefect's serialized context."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from prefect.context import FlowRunContext, TagsContext, TaskRunContext, serialize_context
from prefect.settings.context import get_current_settings

import meadowrun_core as mr
from meadowrun_prefect.options import MeadowrunOptions, _current_options, resources_from_tags

if TYPE_CHECKING:
    from prefect.tasks import Task


class FlowSettings:
    """One runner's caches of the flow's settings, context and exposed API ports."""

    def __init__(self) -> None:
        self._context_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._prefect_env: dict[str, str] | None = None
        self._exposed: set[tuple[int, str]] = set()

    def options_for(
        self,
        task: Task[Any, Any],
        resources: mr.Resources | None,
        deployment: mr.Deployment | None,
        host: mr.Host | None,
    ) -> MeadowrunOptions:
        """A task run's resources, deployment and host: a ``meadowrun_options`` block, then
        its tags, then the runner's own (``resources``, ``deployment``, ``host``)."""
        scoped = _current_options.get() or MeadowrunOptions()
        tags = {*task.tags, *(TagsContext.get().current_tags or ())}
        chosen_resources = scoped.resources or resources_from_tags(
            sorted(tags), resources or mr.Resources()
        )
        chosen_deployment = scoped.deployment or deployment or mr.Deployment.mirror_local()
        env = {**self._prefect_environment(), **chosen_deployment.environment_variables}
        chosen_host = scoped.host or host
        self._expose_api(env.get("PREFECT_API_URL"), chosen_host)
        return MeadowrunOptions(
            resources=chosen_resources,
            deployment=dataclasses.replace(chosen_deployment, environment_variables=env),
            host=chosen_host,
        )

    def _expose_api(self, api_url: str | None, host: mr.Host | None) -> None:
        """A Prefect API on this machine's loopback (the flow's ephemeral or local server) is
        made reachable at the same URL on cloud instances, through meadowrun's SSH
        connections, so remote task runs report their states to it (a no-op locally)."""
        from urllib.parse import urlsplit

        if not api_url:
            return
        url = urlsplit(api_url)
        if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
            return
        key = (url.port, repr(host))
        if key not in self._exposed:
            mr.expose_port(url.port, host=host)
            self._exposed.add(key)

    def _prefect_environment(self) -> dict[str, str]:
        """The flow's Prefect settings as environment variables, PREFECT_API_URL included
        (without it the worker would start an API server of its own)."""
        if self._prefect_env is None:
            settings = get_current_settings()
            env = {
                key: value
                for key, value in settings.to_environment_variables(exclude_unset=True).items()
                if key.startswith("PREFECT_")
            }
            if not settings.api.url:
                # ephemeral mode: the flow's client started this server; point workers at it
                from prefect.server.api.server import SubprocessASGIServer

                server = SubprocessASGIServer()
                server.start()
                env["PREFECT_API_URL"] = server.api_url
            self._prefect_env = env
        return self._prefect_env

    def serialized_context(self) -> dict[str, Any]:
        """Prefect's serialized context, computed once per flow run (as ProcessPool does)."""
        flow_ctx = FlowRunContext.get()
        task_ctx = TaskRunContext.get()
        key = (
            flow_ctx.flow_run.id if flow_ctx and flow_ctx.flow_run else None,
            task_ctx.task_run.id if task_ctx else None,
            tuple(TagsContext.get().current_tags or ()),
        )
        if self._context_cache is None or self._context_cache[0] != key:
            context = serialize_context()
            # The settings travel as PREFECT_* environment variables of the deployment
            # (_prefect_environment), which the worker reads once; rebuilding them from the
            # context for every task run would cost more than a small task itself.
            context["settings_context"] = {}
            self._context_cache = (key, context)
        return self._context_cache[1]

    def forget_context(self) -> None:
        """The flow run ended: its context is not sent again."""
        self._context_cache = None
