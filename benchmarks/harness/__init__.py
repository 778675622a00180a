"""One harness for every script in ``benchmarks/``: the servers it starts (process groups with
logs, uvicorn on a thread), the readiness waits, the load generators (wrk, an httpx closed
loop, an open-loop pacer), CPU accounting, py-spy, and the machine facts and results file
each run records. Benchmarks import rooms and this package, never the front door or the demo.

    from benchmarks.harness import Procs, free_port, wait_http, run_wrk
"""

from __future__ import annotations

from benchmarks.harness.load import (
    closed_loop,
    latency_stats,
    open_loop,
    run_wrk,
    write_wrk_script,
    wrk_get_paths,
    wrk_post_bodies,
)
from benchmarks.harness.processes import (
    Procs,
    children_cpu,
    cpu_busy,
    exit_on_signals,
    free_port,
    group_cpu,
    log_tail,
    tree_cpu,
    tree_pids,
    wait_http,
)
from benchmarks.harness.profiling import find_pyspy, pyspy_record, read_stacks
from benchmarks.harness.results import best_of, machine, save_result
from benchmarks.harness.servers import (
    ThreadedServer,
    apt_install,
    ensure_nginx,
    ensure_wrk,
    serve,
)

__all__ = [
    "Procs",
    "ThreadedServer",
    "apt_install",
    "best_of",
    "children_cpu",
    "closed_loop",
    "cpu_busy",
    "ensure_nginx",
    "ensure_wrk",
    "exit_on_signals",
    "find_pyspy",
    "free_port",
    "group_cpu",
    "latency_stats",
    "log_tail",
    "machine",
    "open_loop",
    "pyspy_record",
    "read_stacks",
    "run_wrk",
    "save_result",
    "serve",
    "tree_cpu",
    "tree_pids",
    "wait_http",
    "write_wrk_script",
    "wrk_get_paths",
    "wrk_post_bodies",
]
