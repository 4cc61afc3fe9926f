"""A real Dask cluster on this machine: a `dask scheduler` and N `dask worker` processes (nanny + worker
each, one thread), every one listening on 127.0.0.1 only, each in a process group of its own so that
`stop` kills it whole. Used by bench/cluster_bench.py and by tests/test_dask_cluster.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")


class ClusterError(RuntimeError):
    """The cluster did not come up; the message says which part and where its log is."""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the product's settings, with this tree on the path (the workers
    unpickle processor.engine.cluster from it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Cluster:
    """A scheduler and `workers` worker processes on 127.0.0.1; `address` is the scheduler's,
    `worker_pids` the workers' nannies (each the root of its worker's process tree)."""

    def __init__(self, directory: Path, workers: int, env: dict[str, str] | None = None):
        self.file = directory / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        self.worker_pids: list[int] = []
        try:
            self.scheduler = self._start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                          "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(self.file)],
                                         directory / "scheduler.log")
            deadline = time.monotonic() + 60
            while not (self.file.exists() and self.file.stat().st_size):
                if time.monotonic() > deadline:
                    raise ClusterError(f"the dask scheduler did not start in 60 s: see {directory / 'scheduler.log'}")
                time.sleep(0.1)
            time.sleep(0.2)  # the file is written whole before the scheduler serves, but not atomically
            self.address = json.loads(self.file.read_text())["address"]
            for i in range(workers):
                self.worker_pids.append(self._start(
                    [str(DASK), "worker", "--scheduler-file", str(self.file), "--host", "127.0.0.1",
                     "--dashboard-address", "127.0.0.1:0", "--nthreads", "1", "--nworkers", "1"],
                    directory / f"worker-{i}.log", env).pid)
            if workers:
                from distributed import Client

                with Client(self.address, timeout="30s") as client:
                    client.wait_for_workers(workers, timeout=60)
        except BaseException:
            self.stop()
            raise

    def _start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=clean_env(**(env or {})), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
