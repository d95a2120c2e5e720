"""Executors run real commands: the local pool and a real local Ray instance (loopback only)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfs.errors import ModelfsError
from modelfs.ops.executors import (
    Executor,
    ExecutorKind,
    Job,
    LocalExecutor,
    get_executor,
    register_executor,
    registered_executors,
    start_local_ray,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _order(ex: Executor, jobs: list[Job]) -> list[int]:
    return [i for i, _ in ex.run(jobs)]


def test_results_come_as_each_job_finishes() -> None:
    ex = get_executor("local", jobs=2)
    try:
        t0 = time.monotonic()
        out = list(ex.run([Job("sleep 0.6; echo slow", 10), Job("echo fast; echo err >&2; exit 3", 10)]))
        assert [i for i, _ in out] == [1, 0]  # the fast one first, though submitted second
        fast, slow = out[0][1], out[1][1]
        assert (fast.exit_code, fast.stdout, fast.stderr, fast.timed_out) == (3, "fast\n", "err\n", False)
        assert slow.ok and slow.stdout == "slow\n" and slow.seconds >= 0.5
        assert time.monotonic() - t0 < 2.0  # in parallel, two slots
        assert fast.runtime is not None and fast.runtime["python"]
        assert fast.last_lines(1) == ["err"]
    finally:
        ex.close()


def test_jobs_slots_limit_how_many_run_at_once(tmp_path: Path) -> None:
    ex = get_executor("local", jobs=1)
    try:
        t0 = time.monotonic()
        assert _order(ex, [Job("sleep 0.3", 10), Job("sleep 0.3", 10)]) == [0, 1]
        assert time.monotonic() - t0 >= 0.55  # one after the other
    finally:
        ex.close()


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    ex = get_executor("local", jobs=1)
    try:
        t0 = time.monotonic()
        ((_, r),) = ex.run([Job(f"sleep 30 & echo $! > {pidfile}; wait", 0.5)])
        assert r.timed_out and not r.ok and r.exit_code < 0
        assert time.monotonic() - t0 < 5
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 3
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the timed-out job's background child survived"
    finally:
        ex.close()


def test_env_cwd_and_a_long_output_tail(tmp_path: Path) -> None:
    ex = get_executor("local")
    try:
        jobs = [Job("echo $GREETING; pwd", 10, cwd=str(tmp_path), env={"GREETING": "hi there"}),
                Job("python3 -c \"print('x' * 200_000)\"; echo END", 10),
                Job("true", 10, cwd=str(tmp_path / "missing"))]
        res = dict(ex.run(jobs))
        assert res[0].stdout == f"hi there\n{tmp_path}\n"
        assert len(res[1].stdout) <= 64 << 10 and res[1].stdout.endswith("END\n")
        assert res[2].exit_code == 127 and "could not start" in res[2].stderr
    finally:
        ex.close()


def test_a_shared_executor_hands_each_caller_its_own_results() -> None:
    ex = LocalExecutor(jobs=2)
    try:
        other = ex.submit(Job("sleep 0.1; echo other", 10))  # finishes first, not ours
        assert [r.stdout for _, r in ex.run([Job("sleep 0.4; echo mine", 10)])] == ["mine\n"]
        ticket, r = ex.wait_one()  # still there for its own caller
        assert (ticket, r.stdout, ex.pending()) == (other, "other\n", 0)
    finally:
        ex.close()


def test_close_kills_running_jobs(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    ex = get_executor("local", jobs=1)
    ex.submit(Job(f"echo $$ > {pidfile}; exec sleep 30", 60))
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ex.close()
    assert not _alive(int(pidfile.read_text()))
    with pytest.raises(ModelfsError, match="closed"):
        ex.submit(Job("true", 1))


def test_the_registry_names_executors_and_takes_plug_ins() -> None:
    assert {"local", "ray"} <= set(registered_executors())
    with pytest.raises(ModelfsError, match="unknown executor 'nope'"):
        get_executor("nope")
    with pytest.raises(ModelfsError, match="at least 1"):
        get_executor("local", jobs=0)
    kind = register_executor(ExecutorKind("test-serial", lambda jobs: LocalExecutor(1)))
    ex = get_executor(kind.name, jobs=4)
    try:
        assert isinstance(ex, LocalExecutor) and ex.jobs == 1
    finally:
        ex.close()


# -- Ray: one real local instance for the module, on loopback --------------------------------
@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    import ray

    global ELSEWHERE_BEFORE
    ELSEWHERE_BEFORE = set(listening_beyond_loopback())  # the machine's own, not Ray's
    start_local_ray(2)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_runs_jobs_as_tasks_and_returns_them_as_they_finish(ray_instance: Any) -> None:
    ex = get_executor("ray", jobs=2)
    try:
        out = list(ex.run([Job("sleep 1.0; echo slow", 30), Job("echo fast; exit 4", 30,
                                                                 resources={"num_cpus": 1})]))
        assert [i for i, _ in out] == [1, 0]
        assert (out[0][1].exit_code, out[0][1].stdout) == (4, "fast\n")
        assert out[1][1].ok and out[1][1].stdout == "slow\n"
        ((_, r),) = ex.run([Job("sleep 20", 0.5)])
        assert r.timed_out
        # more than the local instance has fails at once (it would wait forever)
        ((_, r),) = ex.run([Job("true", 30, resources={"num_gpus": 1})])
        assert r.exit_code == -1 and "needs GPU=1 but this Ray instance has 0" in r.stderr
        (node,) = ray_instance.nodes()  # Ray talks to itself over loopback, not the network
        assert node["NodeManagerAddress"] == "127.0.0.1"
        assert set(listening_beyond_loopback()) <= ELSEWHERE_BEFORE  # and listens nowhere else
    finally:
        ex.close()
    assert ray_instance.is_initialized()  # a running instance is used and left to its owner


def test_a_cascade_runs_its_recipes_as_ray_tasks(ray_instance: Any, tmp_path: Path) -> None:
    from recipehelp import build_lineage, new_base, scripts

    from modelfs.cli.version_dirs import MountedVersions
    from modelfs.ops.cascade import make_plan
    from modelfs.ops.cascade_run import run_cascade

    s = scripts(tmp_path)
    lin = build_lineage(tmp_path, {"ft": (["base"], s.train_cmd()), "sib": (["base"], s.train_cmd("--seed", "2")),
                                   "avg": (["ft", "sib"], s.merge_cmd())})
    new_base(lin)
    ex = get_executor("ray", jobs=2)
    try:
        with MountedVersions(lin.store) as dirs:
            rep = run_cascade(lin.repo, make_plan(lin.repo, "base"), dirs, ex, executor_name="ray",
                              run_tests=False)
        assert rep.failed == [] and lin.s.runs() == {"ft": 1, "sib": 1, "avg": 1}
        avg = lin.repo.resolve("avg")
        assert avg.derived_from == (lin.repo.resolve("ft@2").id, lin.repo.resolve("sib@2").id)
        assert avg.provenance["recipe"]["executor"] == "ray"
    finally:
        ex.close()
        lin.repo.close()


ELSEWHERE_BEFORE: set[str] = set()


def listening_beyond_loopback() -> list[str]:
    """TCP listeners of this machine on an address other than loopback (`ss -ltn`)."""
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        local = line.split()[3]
        host = local.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
        if host in ("*", "0.0.0.0", "::") or not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            bad.append(local)
    return bad


def test_a_local_ray_instance_is_refused_without_the_loopback_switch() -> None:
    """Without LOCAL_RAY_ENV, Ray would advertise the network address and bind everywhere."""
    code = ("import os; os.environ.pop('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER', None)\n"
            "from modelfs.ops.executors import start_local_ray\n"
            "try:\n    start_local_ray(1)\nexcept Exception as e:\n    print(type(e).__name__, e)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.stdout.startswith("ModelfsError a local Ray instance would listen on every"), out
