"""Where recipe and test commands run: a registry of executors (`local`, `ray`, plug-ins).

A command over the lineage is a `Job` (a `bash -c` line, a timeout, resources); an executor
runs jobs and hands back each `JobResult` as it finishes, so a caller can start the next
step of its plan at once. The ordering is the caller's plan; the scheduling is the
executor's (a pool of slots here, Ray's scheduler on a cluster). Third-party executors
register through the `modelfs.executors` entry-point group with an `ExecutorKind`.

`submit` / `wait_one` are the dynamic form (a cascade submits a node as soon as its last
parent finishes); `run` is the batch form built on them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import IO, Any, Protocol

from modelfs.errors import ModelfsError
from modelfs.registry import Registry

TAIL_BYTES = 64 << 10  # what a result keeps of each stream: enough for a traceback
KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL of a job that ran out of time
# A local Ray instance must advertise, talk over and listen on loopback only. Ray 2.60 turns
# "127.0.0.1" into the machine's network address (services.resolve_ip_for_localhost) and
# then binds its gRPC servers to every interface, unless its "cluster mode" is off: with
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment *before ray is imported*, the node
# is 127.0.0.1 and every server listens there alone (checked with `ss -ltn`). The front end
# (the CLI, a test, a script) puts LOCAL_RAY_ENV into the environment; this layer does not
# touch it, and refuses to start a local instance without it.
RAY_LOOPBACK = "127.0.0.1"
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass(frozen=True, slots=True)
class Job:
    """One command: `cmd` is run with `bash -c`; `env` is added to the inherited environment."""

    cmd: str
    timeout: float
    cwd: str | None = None
    env: dict[str, str] | None = None
    resources: dict[str, float] | None = None  # {"num_cpus": 1, "num_gpus": 0.5} (Ray honours them)


@dataclass(frozen=True, slots=True)
class JobResult:
    exit_code: int  # negative: killed by that signal (a timeout kills with SIGTERM, then SIGKILL)
    stdout: str  # the last TAIL_BYTES of each stream
    stderr: str
    seconds: float
    timed_out: bool
    runtime: dict[str, str] | None = None  # where it ran: python, torch (when installed), host

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def last_lines(self, n: int = 10) -> list[str]:
        """The end of the output (stderr after stdout), for a failure report."""
        lines = (self.stdout.rstrip("\n").splitlines() if self.stdout.strip() else []) + \
                (self.stderr.rstrip("\n").splitlines() if self.stderr.strip() else [])
        return lines[-n:]


class Executor(Protocol):
    def submit(self, job: Job) -> int:
        """Start `job` (or queue it for a free slot); returns its ticket."""
        ...

    def wait_one(self, among: Collection[int] | None = None) -> tuple[int, JobResult]:
        """The next job to finish (of the tickets `among`, else of all); ModelfsError when
        none is pending. Callers sharing one executor each wait for their own tickets."""
        ...

    def pending(self) -> int: ...

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, JobResult]]:
        """Run `jobs`, yielding (index into `jobs`, result) as each finishes."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ExecutorKind:
    """A named way to build an executor: `make(jobs, **options)`."""

    name: str
    make: Callable[..., Executor]
    description: str = ""


EXECUTORS: Registry[ExecutorKind] = Registry("modelfs.executors", "executor", lambda k: k.name)
register_executor = EXECUTORS.register
registered_executors = EXECUTORS.all


def get_executor(name: str = "local", jobs: int = 1, **options: Any) -> Executor:
    """An executor with `jobs` slots; options go to its kind (the ray one takes `address`)."""
    if jobs < 1:
        raise ModelfsError(f"--jobs must be at least 1, not {jobs}")
    return EXECUTORS.get(name).make(jobs, **options)


# -- running one job (in a thread here, or in a Ray worker) -------------------------------
def _tail(f: IO[bytes]) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - TAIL_BYTES))
    return f.read().decode("utf-8", errors="replace")


def _argv(job: Job) -> list[str]:
    """`bash -c CMD`, through `env K=V ...` when the job adds variables (the environment is
    inherited, never read here: only the CLI touches os.environ)."""
    if not job.env:
        return ["bash", "-c", job.cmd]
    for k in job.env:
        if not k or "=" in k or "\0" in k:
            raise ModelfsError(f"bad environment variable name {k!r}")
    return ["env", *(f"{k}={v}" for k, v in job.env.items()), "bash", "-c", job.cmd]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the job's whole process group, SIGKILL what is left after a grace period."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # children the leader left
        os.killpg(proc.pid, signal.SIGKILL)


def runtime() -> dict[str, str]:
    """The Python (and torch, when installed) a job ran under, for provenance; no import of torch."""
    info = {"python": platform.python_version(), "executable": sys.executable,
            "host": socket.gethostname()}
    if importlib.util.find_spec("torch") is not None:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info["torch"] = importlib.metadata.version("torch")
    return info


def run_job(job: Job, started: Callable[[subprocess.Popen[bytes]], None] | None = None) -> JobResult:
    """Run one job to its end or its timeout; the process group dies with a timeout.

    Output goes to anonymous temporary files, not pipes, so a chatty command never blocks
    on a full pipe and only the tail is read back.
    """
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(_argv(job), cwd=job.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
        except OSError as e:  # a missing cwd, no bash: the job failed, the caller goes on
            return JobResult(127, "", f"could not start: {e}", time.monotonic() - t0, False, runtime())
        if started is not None:
            started(proc)
        timed_out = False
        try:
            proc.wait(job.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            proc.wait()
        finally:
            if proc.returncode is None:  # interrupted (KeyboardInterrupt): leave nothing behind
                _kill_group(proc)
                proc.wait()
        seconds = time.monotonic() - t0
        return JobResult(proc.returncode, _tail(out), _tail(err), seconds, timed_out, runtime())


class _Tickets:
    """Ticket numbering and the batch `run` over submit / wait_one."""

    def __init__(self) -> None:
        self._next = 0

    def _ticket(self) -> int:
        t = self._next
        self._next += 1
        return t

    def submit(self, job: Job) -> int:  # pragma: no cover - every executor defines it
        raise NotImplementedError

    def wait_one(self, among: Collection[int] | None = None) -> tuple[int, JobResult]:  # pragma: no cover
        raise NotImplementedError

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[int, JobResult]]:
        index = {self.submit(j): i for i, j in enumerate(jobs)}
        while index:
            ticket, result = self.wait_one(index)
            yield index.pop(ticket), result


class LocalExecutor(_Tickets):
    """`jobs` slots, each running one subprocess at a time (threads wait on the processes)."""

    def __init__(self, jobs: int = 1) -> None:
        super().__init__()
        self.jobs = jobs
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="modelfs-job")
        self._futures: dict[Future[JobResult], int] = {}
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, job: Job) -> JobResult:
        procs: list[subprocess.Popen[bytes]] = []

        def started(p: subprocess.Popen[bytes]) -> None:
            procs.append(p)
            with self._lock:
                self._procs.add(p)
                closed = self._closed
            if closed:
                _kill_group(p)

        try:
            return run_job(job, started)
        finally:
            with self._lock:
                self._procs.difference_update(procs)

    def submit(self, job: Job) -> int:
        if self._closed:
            raise ModelfsError("executor is closed")
        ticket = self._ticket()
        self._futures[self._pool.submit(self._run, job)] = ticket
        return ticket

    def pending(self) -> int:
        return len(self._futures)

    def wait_one(self, among: Collection[int] | None = None) -> tuple[int, JobResult]:
        mine = [f for f, t in self._futures.items() if among is None or t in among]
        if not mine:
            raise ModelfsError("no job is pending")
        done, _ = wait(mine, return_when=FIRST_COMPLETED)
        fut = min(done, key=lambda f: self._futures[f])  # deterministic among ties
        return self._futures.pop(fut), fut.result()

    def close(self) -> None:
        """Stop: queued jobs are dropped, running ones killed with their process groups."""
        with self._lock:
            self._closed = True
            procs = list(self._procs)
        for f in self._futures:
            f.cancel()
        for p in procs:
            _kill_group(p)
        self._pool.shutdown(wait=True)
        self._futures.clear()


def start_local_ray(num_cpus: int) -> None:
    """A private Ray instance on the loopback address only (see LOCAL_RAY_ENV), no dashboard."""
    import ray
    from ray._private import ray_constants  # the switch LOCAL_RAY_ENV sets, read at import

    if ray_constants.ENABLE_RAY_CLUSTER:
        raise ModelfsError("a local Ray instance would listen on every network interface: "
                           "start it with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the "
                           "environment (the modelfs CLI sets it)")
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address=RAY_LOOPBACK,
             log_to_driver=False, logging_level=logging.WARNING)


def _ray_job(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The Ray task body: one job run in the worker, its result as plain data."""
    return asdict(run_job(Job(**fields)))


class RayExecutor(_Tickets):
    """Each job a Ray task (`num_cpus` / `num_gpus` from its resources), results by `ray.wait`.

    With `address` (the CLI passes $RAY_ADDRESS) it joins that cluster; otherwise it starts a
    local instance with `jobs` CPUs on the loopback address only, and shuts it down on close.
    An instance already running in this process (a test's) is used and left running.
    On a local instance (which cannot grow) a job asking for more than it has (a GPU on a
    machine without one) fails at once instead of waiting forever.
    """

    def __init__(self, jobs: int = 1, address: str | None = None) -> None:
        super().__init__()
        try:
            import ray
        except ImportError:
            raise ModelfsError("the ray executor needs Ray: pip install 'modelfs[ray]'") from None
        self._ray = ray
        self._own = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                start_local_ray(jobs)
            self._own = True
        self._task = ray.remote(_ray_job)
        self._refs: dict[Any, int] = {}
        self._refused: dict[int, JobResult] = {}  # infeasible on a local instance: failed at once
        self._capacity: dict[str, float] | None = None if address else dict(ray.cluster_resources())

    def _infeasible(self, want: Mapping[str, float]) -> str | None:
        if self._capacity is None:  # a cluster may grow (an autoscaler): Ray decides
            return None
        for name, amount in want.items():
            have = self._capacity.get(name, 0.0)
            if amount > have:
                return f"the job needs {name}={amount:g} but this Ray instance has {have:g}: not run"
        return None

    def submit(self, job: Job) -> int:
        res = dict(job.resources or {})
        opts: dict[str, Any] = {"num_cpus": float(res.pop("num_cpus", 1)),
                                "num_gpus": float(res.pop("num_gpus", 0)),
                                "max_retries": 0}
        if res:
            opts["resources"] = res
        ticket = self._ticket()
        why = self._infeasible({"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **res})
        if why is not None:
            self._refused[ticket] = JobResult(-1, "", why, 0.0, False, None)
        else:
            self._refs[self._task.options(**opts).remote(asdict(job))] = ticket
        return ticket

    def pending(self) -> int:
        return len(self._refs) + len(self._refused)

    def wait_one(self, among: Collection[int] | None = None) -> tuple[int, JobResult]:
        for t in self._refused:
            if among is None or t in among:
                return t, self._refused.pop(t)
        mine = [r for r, t in self._refs.items() if among is None or t in among]
        if not mine:
            raise ModelfsError("no job is pending")
        (ref,), _ = self._ray.wait(mine, num_returns=1)
        ticket = self._refs.pop(ref)
        try:
            return ticket, JobResult(**self._ray.get(ref))
        except self._ray.exceptions.RayError as e:  # the worker died, the task was cancelled
            return ticket, JobResult(-1, "", f"ray task failed: {e}", 0.0, False, None)

    def close(self) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._refs.clear()
        self._refused.clear()
        if self._own and self._ray.is_initialized():
            self._ray.shutdown()
        self._own = False


register_executor(ExecutorKind("local", LocalExecutor, "subprocesses on this machine, --jobs at a time"))
register_executor(ExecutorKind("ray", RayExecutor,
                               "one Ray task per job; $RAY_ADDRESS joins a cluster, else a local instance"))
