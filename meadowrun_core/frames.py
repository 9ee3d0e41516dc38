"""The frames between a client, an instance's agent and the agent's workers, one TypedDict per
frame header.

``protocol.py`` signs and carries a frame as a JSON header plus a binary payload; these types
say which keys each header has (``total=False`` marks the optional ones) and what its payload
holds, so every sender and reader of a frame looks in one place. A header is read as a plain
dict and taken as its type once its ``type`` (and a run's ``kind``) is known: frames come only
from peers holding the cluster key.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, Required, TypedDict

# How a job ended, as its final frame says (``disconnected`` is only ever made by a client).
JobStatus = Literal[
    "succeeded",  # a function returned
    "failed",  # a function raised, or its code or arguments could not be loaded (``stage``)
    "exited",  # a command exited (``return_code``)
    "failed_to_start",  # a command could not be started, or its deployment prepared
    "died",  # the worker process died
    "cancelled",
    "out_of_memory",
    "timed_out",  # it ran past the run frame's ``timeout``
    "interrupted",  # the instance was reclaimed
    "lease_expired",  # the client that owns the job went away
    "stopped",  # a map slot stopped: no more tasks, or asked to stop
    "refused",  # the agent has no allocation for the job, or does not know its kind
    "error",  # the agent itself failed
    "unknown",  # attach: the agent runs no such job (it ended, or never came)
    "disconnected",  # the client lost its connection to the agent
]
# Where a call failed: loading the function or arguments, running it, running out of memory,
# or pickling its result.
FailureStage = Literal["load", "run", "memory", "result"]
# ``deployment.spec.PreparedDeployment.to_json()``
DeploymentJson = dict[str, Any]


# --- client -> agent ---------------------------------------------------------------------


class Hello(TypedDict):
    """Client -> agent, first on every connection (``protocol.hello_frame``): proves the
    cluster key, fresh and once (``HelloGuard``). No payload."""

    type: Literal["hello"]
    time: float  # epoch seconds when made
    nonce: str  # never accepted twice


class FunctionRef(TypedDict, total=False):
    """A function, by exactly one of: the key of its signed pickle in the object store, or
    its import name (``"package.module.function"``)."""

    function_key: str
    function_name: str


class _RunCommon(TypedDict, total=False):
    type: Required[Literal["run"]]
    job_id: Required[str]  # its allocation on this instance
    deployment: Required[DeploymentJson]
    job_key: str  # a keyed or detached job: its outcome is recorded under this key
    caller_cwd: str  # the client's working directory: the job runs in its mirror if any
    # seconds the call (or command) may run, counted from when it starts here; then it is
    # killed and ends ``timed_out``
    timeout: float


class RunFunction(_RunCommon, FunctionRef, total=False):
    """Client -> agent: run one function call. Payload: the pickled ``(args, kwargs)``, or
    empty when they were too large for a frame and went to the store (``arguments_key``)."""

    kind: Required[Literal["function"]]
    arguments_key: str
    # seconds the agent may keep the call's room for this connection's next call of the same
    # shape once it ends (its final frame says ``held``): a blocking caller's back-to-back
    # calls skip a placement and a deallocation (``agent/held_rooms.py``)
    hold: float
    # run in the room this connection's previous call left held under the same ``job_id``;
    # refused with ``hold_lapsed`` when the agent has given that room back meanwhile
    reuse: bool


class RunCommand(_RunCommon, total=False):
    """Client -> agent: run one command. No payload."""

    kind: Required[Literal["command"]]
    args: Required[list[str]]
    environment: dict[str, str]  # on top of the deployment's
    cwd: str  # a working directory that overrides the agent's choice (no client sends it yet)


class MapSpec(TypedDict):
    """The queues and function of a map job, as one of its slots needs them."""

    request_queue: str
    result_queue: str
    function_key: str
    max_attempts: int
    task_timeout: NotRequired[float]  # seconds a task may run; then its worker is killed


class RunMap(_RunCommon, total=False):
    """Client -> agent: run one slot of a map job: take tasks from its request queue until
    there are none left or it is stopped. No payload."""

    kind: Required[Literal["map"]]
    map: Required[MapSpec]


Run = RunFunction | RunCommand | RunMap


class Attach(TypedDict, total=False):
    """Client -> agent: follow a running job from its start: the output the agent kept is
    replayed (marked ``replay_for`` this follower), then everything live, then its final
    frame; a final frame with status ``unknown`` if no such job runs here. No payload."""

    type: Required[Literal["attach"]]
    job_id: Required[str]
    follower: str  # the replay goes to this follower alone (empty: to all the job's listeners)


class Cancel(TypedDict, total=False):
    """Client -> agent: kill a job now (its final frame says ``cancelled``). A cancel that
    arrives before its run frame's job started cancels it on arrival. No payload."""

    type: Required[Literal["cancel"]]
    job_id: Required[str]
    reason: str  # told to every follower in the final frame's message


class Stop(TypedDict, total=False):
    """Client -> agent: let a map slot finish its current tasks and end (``stopped``).
    No payload."""

    type: Required[Literal["stop"]]
    job_id: Required[str]
    reason: str  # not used by the agent


ClientFrame = Hello | Run | Attach | Cancel | Stop


# --- agent -> client ---------------------------------------------------------------------


class Output(TypedDict, total=False):
    """Agent -> client: a piece of a job's stdout or stderr, as it was written. Payload: the
    bytes."""

    type: Required[Literal["output"]]
    job_id: Required[str]
    stream: Required[str]  # "stdout" or "stderr"
    replay_for: str  # kept output replayed for this follower (``Attach``) only


class Report(TypedDict):
    """Agent -> client: a value the job sent with ``meadowrun_core.report`` (or a log record
    it forwarded, a ``job_context.ForwardedLog``), to live followers only. Payload: the
    pickled value."""

    type: Literal["report"]
    job_id: str


class JobOutcome(TypedDict, total=False):
    """How a job ended, as the code that ran it says: the body of its final frame."""

    status: Required[JobStatus]
    message: str  # why, for people
    stage: FailureStage  # failed: where
    result_key: str  # succeeded: the result was too large for a frame and is in the store
    return_code: int  # a command's exit code (also when it was cancelled)


class Final(JobOutcome, total=False):
    """Agent -> client, a job's last frame: how it ended (after its allocation was freed, or
    ``held`` for the client's next call).
    Payload: succeeded: the pickled result (empty with ``result_key``); failed: the pickled
    ``(exception or None, traceback text)``; otherwise empty. A keyed job's final header is
    also kept, as JSON, in its job-key record (``record_job_final``), and clients write
    such records themselves for jobs that never reached an agent."""

    type: Required[Literal["final"]]
    job_id: Required[str]
    kind: str  # the run frame's kind; absent when refused or unknown
    output_key: str  # keyed jobs: the kept output, a pickled list of (stream, bytes)
    held: bool  # the room stays allocated for the client's next call (``RunFunction.hold``)
    hold_lapsed: bool  # refused: the held room of a ``reuse`` run was already given back


AgentFrame = Output | Report | Final


class Disconnected(TypedDict):
    """Never on the wire: the event a client's connection gives every follower when the
    connection to the agent closed (``client/connection.py``). No payload."""

    type: Literal["disconnected"]


# --- agent -> worker ---------------------------------------------------------------------


class LoadCode(TypedDict):
    """Agent -> worker: put this code manifest's mirror on ``sys.path`` (answered by
    ``CodeLoaded``). No payload."""

    type: Literal["load_code"]
    manifest: str  # the code manifest's key in the object store
    cache_dir: str  # where this instance mirrors code


class Call(FunctionRef, total=False):
    """Agent -> worker: run a function job's call (answered by a ``Result``). Payload: the
    pickled ``(args, kwargs)``."""

    type: Required[Literal["call"]]
    call_id: Required[str]  # the job id, echoed in the result
    caller_cwd: Required[str | None]  # run in this directory's mirror if the code has one,
    workdir: Required[str]  # else here


class CallBatch(TypedDict):
    """Agent -> worker: run a map slot's next tasks, one after another (answered by one
    ``Result`` per task, in order, so a death pins down its task). Payload: the pickled list
    of the tasks' pickled arguments."""

    type: Literal["call_batch"]
    function_key: str
    pid_file: str


class Exit(TypedDict):
    """Agent -> worker: exit now (a worker also exits when the agent's end closes). No
    payload."""

    type: Literal["exit"]


AgentToWorkerFrame = LoadCode | Call | CallBatch | Exit


# --- worker -> agent ---------------------------------------------------------------------


class Ready(TypedDict):
    """Worker -> agent, once at start: it is listening. No payload."""

    type: Literal["ready"]
    pid: int


class CodeLoaded(TypedDict):
    """Worker -> agent: the answer to ``LoadCode``. Payload: if not ok, the pickled
    ``(exception or None, traceback text)``."""

    type: Literal["code_loaded"]
    ok: bool


class Result(TypedDict, total=False):
    """Worker -> agent: the outcome of one call or batch task. Payload: if ok, the pickled
    return value; else the pickled ``(exception or None, traceback text)``."""

    type: Required[Literal["result"]]
    ok: Required[bool]
    stage: FailureStage  # not ok: where it failed
    call_id: str  # answering a ``Call`` (not a batch task)
    seconds: float  # a batch task: how long the worker spent on it (sizes the next batch)


class WorkerReport(TypedDict):
    """Worker -> agent, at any time during a call: a value the job reported (the agent sends
    it on as a ``Report``). Payload: the pickled value."""

    type: Literal["report"]


WorkerFrame = Ready | CodeLoaded | Result | WorkerReport
