"""Ray plumbing for sharded jobs: a quiet local (or joined) Ray session, and a pool of actors that pull
tasks from a queue, with a dead actor's task retried on a fresh actor.

The pool keeps one task in flight per actor and hands the next queued task to whichever actor finishes
first. A task whose actor dies (killed process, OOM, crashed worker) goes back to the front of the queue
and runs on a newly created actor; a task that raises an exception is not retried: a `CurateError`
raised inside an actor comes back to the driver as a `CurateError` (one line), anything else as is.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from curate.errors import CurateError

CONNECT_TIMEOUT_S = 3.0
DEFAULT_MAX_ATTEMPTS = 3

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # never phone home (the machine is offline anyway)
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silence the accelerator-env FutureWarning
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_DISABLE_IMPORT_WARNING": "1",
}


@dataclass
class RaySession:
    """What `ray_session` connected to."""

    started_here: bool  # a local Ray this process started (and will shut down)
    address: str | None  # the cluster joined, None for a local one
    cpus: int
    gpus: int


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port` or `ray://host:port` address; None for `auto` and the like."""
    text = address.strip()
    for prefix in ("ray://", "http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not host:
        raise CurateError(f"--ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def check_ray_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail with one line, within `timeout` seconds, when no Ray cluster (gRPC endpoint) answers at `HOST:PORT`."""
    hp = _host_port(address)
    if hp is None:
        if address.strip() != "auto":
            raise CurateError(f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
        return
    try:
        with socket.create_connection(hp, timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(HTTP2_PREFACE)
            head = _recv_exactly(sock, 9)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        if isinstance(e, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:g} s"
        raise CurateError(f"--ray-address {address}: cannot reach a Ray cluster there ({reason})") from None
    if len(head) < 9 or head[3] != HTTP2_SETTINGS_FRAME:
        raise CurateError(f"--ray-address {address}: something answers there, but not a Ray cluster (no gRPC endpoint)")


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""HTTP/2 client preface plus an empty SETTINGS frame: a gRPC server (Ray's GCS, a Ray Client server) answers
with its own SETTINGS frame; anything else (an HTTP/1 server, a closed socket) does not. `ray.init` would
otherwise retry forever against an endpoint that is not Ray."""
HTTP2_SETTINGS_FRAME = 0x04


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def quiet_ray_env() -> None:
    """Environment that keeps Ray offline, fast and quiet (set before `ray.init`, existing values win)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[RaySession]:
    """Use the Ray this process already runs, join `address`, or start a local Ray sized to `num_cpus`.

    Only a Ray started here is shut down on exit.
    """
    import logging

    import ray

    quiet_ray_env()
    if ray.is_initialized():
        res = ray.cluster_resources()
        yield RaySession(False, address, int(res.get("CPU", 0)), int(res.get("GPU", 0)))
        return
    common: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
    if address:
        check_ray_address(address)
        try:
            ray.init(address=address, **common)
        except Exception as e:  # ConnectionError, RuntimeError, ... : one line for the user
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CurateError(f"--ray-address {address}: could not join the Ray cluster ({first})") from None
    watchdog = None
    if not address:
        from curate.pipelines.ray_reaper import start_watchdog

        # address="local": a new Ray of our own, never a cluster `ray start` left running on this machine
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **common)
        watchdog = start_watchdog()  # the agents Ray leaves behind end with this driver, even on kill -9
    try:
        res = ray.cluster_resources()
        yield RaySession(not address, address, int(res.get("CPU", 0)), int(res.get("GPU", 0)))
    finally:
        ray.shutdown()
        if watchdog is not None:
            from curate.pipelines.ray_reaper import stop_watchdog

            stop_watchdog(watchdog)


def unwrap_task_error(e: Exception) -> BaseException:
    """The exception to raise on the driver for a failed Ray task: a CurateError stays one line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, CurateError) or isinstance(e, CurateError):
        return CurateError(str(cause if isinstance(cause, CurateError) else e).strip().splitlines()[0])
    return e


def actor_death_types() -> tuple[type, ...]:
    """Exceptions that mean the actor (its process) is gone, not that the task itself failed."""
    from ray import exceptions as rex

    return (rex.RayActorError, rex.WorkerCrashedError, rex.OutOfMemoryError, rex.LocalRayletDiedError, rex.NodeDiedError)


@dataclass
class Task:
    """One unit of work: a key (e.g. a shard's row range), the method's arguments, attempts so far."""

    key: Any
    args: tuple
    attempts: int = 0


@dataclass
class Retry:
    """A task that was re-run because its actor died."""

    key: Any
    phase: str
    attempt: int
    error: str

    def to_json(self) -> dict:
        key = list(self.key) if isinstance(self.key, tuple) else self.key
        return {"task": key, "phase": self.phase, "attempt": self.attempt, "error": self.error}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


@dataclass
class ActorPool:
    """`size` actors made by `factory()`; `run` hands queued tasks to free actors, replacing dead ones."""

    factory: Callable[[], Any]
    size: int
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    actors: list = field(default_factory=list)
    retries: list[Retry] = field(default_factory=list)
    on_retry: Callable[[Retry], None] | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise CurateError(f"--workers must be at least 1 (got {self.size})")
        self.actors = [self.factory() for _ in range(self.size)]

    def _replace(self, actor: Any) -> Any:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
        fresh = self.factory()
        self.actors[self.actors.index(actor)] = fresh
        return fresh

    def run(self, method: str, tasks: Sequence[Task], on_result: Callable[[Task, Any], None], phase: str = "") -> None:
        """Run every task (`actor.method(*task.args)`); `on_result(task, result)` in completion order.

        A task whose actor died goes back to the front of the queue; the dead actor is replaced by a fresh
        one that takes tasks once it is up. Meanwhile the live actors go on with the queue, so a cluster that
        lost a node (and cannot place the replacement) still finishes the job on the nodes it has left.
        """
        import ray

        deaths = actor_death_types()
        queue: deque[Task] = deque(tasks)
        idle = list(self.actors)
        in_flight: dict[Any, tuple[Any, Task]] = {}
        starting: dict[Any, Any] = {}  # ready ref of a replacement actor -> the actor
        failed_starts = 0
        try:
            while queue or in_flight:
                while queue and idle:
                    actor, task = idle.pop(0), queue.popleft()
                    task.attempts += 1
                    in_flight[getattr(actor, method).remote(*task.args)] = (actor, task)
                ready, _ = ray.wait([*in_flight, *starting], num_returns=1)
                ref = ready[0]
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                    except deaths as e:  # died before it was up (its node went, its constructor failed): another, bounded
                        failed_starts += 1
                        if failed_starts >= self.max_attempts:
                            raise CurateError(f"{phase or method}: a replacement worker failed to start {failed_starts} times "
                                              f"({_first_line(e)})") from None
                        fresh = self._replace(actor)
                        starting[fresh.__ray_ready__.remote()] = fresh
                        continue
                    idle.append(actor)
                    continue
                actor, task = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except deaths as e:
                    retry = Retry(task.key, phase or method, task.attempts, _first_line(e))
                    self.retries.append(retry)
                    if self.on_retry is not None:
                        self.on_retry(retry)
                    if task.attempts >= self.max_attempts:
                        raise CurateError(
                            f"{phase or method} task {retry.to_json()['task']} failed {task.attempts} times: its actor died ({retry.error})"
                        ) from None
                    fresh = self._replace(actor)
                    starting[fresh.__ray_ready__.remote()] = fresh
                    queue.appendleft(task)
                    continue
                except Exception as e:  # the task itself raised: no retry
                    raise unwrap_task_error(e) from None
                idle.append(actor)
                on_result(task, result)
        finally:
            for ref in in_flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def call_all(self, method: str, *args: Any) -> None:
        """Call `method(*args)` once on every actor (e.g. to hand it data); a dead actor is replaced and called again."""
        import ray

        deaths = actor_death_types()
        for i in range(len(self.actors)):
            attempt = 0
            while True:
                attempt += 1
                try:
                    ray.get(getattr(self.actors[i], method).remote(*args))
                    break
                except deaths as e:
                    retry = Retry(i, method, attempt, _first_line(e))
                    self.retries.append(retry)
                    if self.on_retry is not None:
                        self.on_retry(retry)
                    if attempt >= self.max_attempts:
                        raise CurateError(f"{method} on actor {i} failed {attempt} times ({retry.error})") from None
                    self._replace(self.actors[i])
                except Exception as e:
                    raise unwrap_task_error(e) from None

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
