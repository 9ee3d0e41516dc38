"""Prefect futures for task runs on meadowrun instances, and turning upstream futures into
the final states a remote engine resolves as Prefect's own runners do."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any, TypeVar

from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, PrefectWrappedFuture
from prefect.utilities.annotations import BaseAnnotation, quote
from prefect.utilities.collections import StopVisiting, visit_collection

R = TypeVar("R")


class PrefectMeadowrunFuture(PrefectWrappedFuture[R, concurrent.futures.Future[State[Any]]]):
    """A Prefect future for a task run on a meadowrun instance.

    The wrapped future always ends with the run's final ``State`` (failures, crashes and
    cancellations included), so ``wait`` never raises and ``result`` raises what Prefect
    would.
    """

    @property
    def state(self) -> State[Any]:
        """The final state as soon as the run has one (the API's record of it may lag behind,
        as Prefect 3 writes task-run states through events), else what the API says."""
        if self._final_state is None and self._wrapped_future.done():
            with contextlib.suppress(concurrent.futures.CancelledError):
                if self._wrapped_future.exception() is None:
                    self._final_state = self._wrapped_future.result()
        if self._final_state is not None:
            return self._final_state
        return super().state

    def wait(self, timeout: float | None = None) -> None:
        if self._final_state is not None:
            return
        try:
            state = self._wrapped_future.result(timeout=timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return
        self._final_state = state

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        if self._final_state is None:
            try:
                self._final_state = self._wrapped_future.result(timeout=timeout)
            except concurrent.futures.TimeoutError as exc:
                raise TimeoutError(
                    f"Task run {self.task_run_id} did not complete within {timeout} seconds"
                ) from exc
        value: R = self._final_state.result(raise_on_failure=raise_on_failure, _sync=True)  # type: ignore[call-overload]
        return value


async def resolve_futures_to_states(expr: Any) -> Any:
    """``expr`` with every Prefect future replaced by its final state, once it has one.

    States pickle (futures do not), and the remote engine resolves them exactly as it
    resolves futures: their results, or UpstreamTaskError unless ``allow_failure``.
    """
    futures: dict[int, PrefectFuture[Any]] = {}

    def collect(item: Any, context: dict[str, Any]) -> Any:
        if isinstance(context.get("annotation"), quote):
            raise StopVisiting
        if isinstance(item, PrefectFuture):
            futures[id(item)] = item
        return item

    visit_collection(expr, visit_fn=collect, return_data=False, max_depth=-1, context={})
    if not futures:
        return picklable_annotations(expr)
    states: dict[int, State[Any]] = {}
    for key, future in futures.items():
        states[key] = await final_state(future)

    def replace(item: Any, context: dict[str, Any]) -> Any:
        if isinstance(context.get("annotation"), quote):
            raise StopVisiting
        if isinstance(item, PrefectFuture):
            return states[id(item)]
        return item

    resolved = visit_collection(expr, visit_fn=replace, return_data=True, max_depth=-1, context={})
    return picklable_annotations(resolved)


class _PicklableAnnotation:
    """Unpickles as the Prefect annotation it stands for. Prefect's annotations (tuple
    subclasses) do not survive pickling: ``allow_failure(x)`` comes back as
    ``allow_failure((x,))``, which would hand the task a tuple."""

    def __init__(self, annotation_type: type[Any], value: Any) -> None:
        self.annotation_type = annotation_type
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.annotation_type, (self.value,))


def picklable_annotations(expr: Any) -> Any:
    def swap(item: Any) -> Any:
        if isinstance(item, BaseAnnotation):
            return _PicklableAnnotation(type(item), picklable_annotations(item.unwrap()))
        return item

    return visit_collection(expr, visit_fn=swap, return_data=True, max_depth=-1)


async def final_state(future: PrefectFuture[Any]) -> State[Any]:
    if isinstance(future, PrefectMeadowrunFuture):
        # shielded: giving up on a downstream run must not cancel the upstream one
        wrapped: concurrent.futures.Future[State[Any]] = future.wrapped_future
        return await asyncio.shield(asyncio.wrap_future(wrapped))
    await asyncio.to_thread(future.wait)
    return future.state
