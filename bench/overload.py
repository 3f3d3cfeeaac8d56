"""Overload: 64 clients with 50 ms deadlines on a ~10 ms model, a cheap model on another lane (issue 9, item 9).

    python bench/overload.py [--seconds 10] [--backoff-ms 0] [--before-commit 002a11b]
                             [--before-dir /tmp/memserve-before] [--after-commit COMMIT]

The same scenario against two real daemons, each started as a subprocess with
--threads 1: "before", the tree of the commit before early shedding (exported
with `git archive COMMIT | tar -x -C DIR` unless DIR exists, run with
PYTHONPATH=DIR/server:DIR/client), and "after", this tree (or, with
--after-commit, that commit's tree, exported the same way). The clients are
this tree's. Per daemon:

1. Load a slow model (tests/models.py chain_model, by default 1024 wide, 16
   deep, 8 rows (32 KiB) a request: ~10 ms an execution with one thread) and a cheap one (16 wide, 1 deep, one row)
   into separate workspaces (so separate lanes); time one slow execution on
   the idle daemon (median server compute_us of 20).
2. The cheap model idle: one client, no deadline, for a few seconds.
3. The flood: `--clients` threads (own channel each, spread over
   `--processes` client processes so that the bench's own GIL is not one
   queue) call the slow model in a loop with `--deadline-ms` gRPC deadlines
   for `--seconds`, while one client in the bench's main process keeps
   calling the cheap model without a deadline.

Reported: per outcome the count and the client-observed latency p50/p99 (for
RESOURCE_EXHAUSTED: how long a refusal takes to arrive), the slow lane's
executions (GetDeviceStatus) against OK answers, the mean compute_us of OK
answers, the cheap model's p50/p99 idle and during the flood, and the
daemon's CPU time (utime+stime from /proc/PID/stat) per request served.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from common import start  # noqa: E402

CODES = ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def short(commit: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit], capture_output=True, text=True,
                          check=True).stdout.strip()


def export(commit: str, where: pathlib.Path) -> None:
    """The commit's tree at `where` (git archive | tar -x; no worktree, no change to .git), unless already there."""
    if (where / "server" / "memserve").is_dir():
        return
    where.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(where)], stdin=archive.stdout, check=True)
    if archive.wait():
        raise SystemExit(f"git archive {commit} failed")


def daemon(tree: pathlib.Path | None):
    """(process, target) of a daemon of this tree (None) or of an exported one."""
    flags = ["-m", "memserve", "--port", "0", "--metrics-port", "0", "--device-memory", "512MiB", "--threads", "1"]
    if tree is None:
        return start([sys.executable, *flags])
    return start(["env", f"PYTHONPATH={tree / 'server'}:{tree / 'client'}", sys.executable, *flags])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def flood(target: str, model_id: int, x: np.ndarray, deadline: float, backoff: float, clients: int,
          start_at: float, stop_at: float, results) -> None:
    """One client process: `clients` threads, each with its own channel, calling the slow model from start_at
    to stop_at with `deadline`-second deadlines (waiting `backoff` seconds after a RESOURCE_EXHAUSTED); puts
    ({code: [latency ms]}, [compute ms of OK]) on results."""
    from memserve_client import Client, MemserveError

    lat: dict[str, list[float]] = {}
    compute: list[float] = []
    lock = threading.Lock()

    def run(c) -> None:
        time.sleep(max(0.0, start_at - time.monotonic()))
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            try:
                r = c.execute_with_stats(model_id, {"x": x}, timeout=deadline)
                code = "OK"
            except MemserveError as exc:
                code, r = exc.code.name, None
            took = (time.perf_counter() - t) * 1e3
            with lock:
                lat.setdefault(code, []).append(took)
                if r is not None:
                    compute.append(r.compute_us / 1e3)
            if backoff and code == "RESOURCE_EXHAUSTED":
                time.sleep(backoff)

    conns = [Client(target, timeout=60) for _ in range(clients)]
    for c in conns:  # connect before the flood starts
        c.list_models()
    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    results.put((lat, compute))


def scenario(tree: pathlib.Path | None, a: argparse.Namespace) -> dict[str, float]:
    from memserve_client import Client
    from models import chain_model

    proc, target = daemon(tree)
    try:
        with Client(target, timeout=60) as admin:
            slow = admin.load(chain_model(width=a.width, depth=a.depth), name="slow", max_batch=a.batch)
            fast = admin.load(chain_model(width=16, depth=1), name="fast", max_batch=1)
            x_slow, x_fast = np.ones((a.batch, a.width), np.float32), np.ones((1, 16), np.float32)
            one = np.median([admin.execute_with_stats(slow, {"x": x_slow}).compute_us for _ in range(20)]) / 1e3
            slow_ws = next(w.name for w in admin.device_status().workspaces if slow.id in w.model_ids)

            idle = []
            end = time.monotonic() + a.idle_seconds
            for _ in range(50):
                admin.execute(fast, {"x": x_fast})
            while time.monotonic() < end:
                t = time.perf_counter()
                admin.execute(fast, {"x": x_fast})
                idle.append((time.perf_counter() - t) * 1e3)
            time.sleep(1.5)  # the slow lane idle for longer than a probe interval, as at any flood's start
            executions0 = {w.name: w.executions for w in admin.device_status().workspaces}[slow_ws]

        start_at = time.monotonic() + 3.0  # CLOCK_MONOTONIC: the same clock in every process
        stop_at = start_at + a.seconds
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        shares = [a.clients // a.processes + (k < a.clients % a.processes) for k in range(a.processes)]
        args = (target, slow.id, x_slow, a.deadline_ms / 1e3, a.backoff_ms / 1e3)
        procs = [ctx.Process(target=flood, args=(*args, n, start_at, stop_at, results)) for n in shares if n]
        for p in procs:
            p.start()
        cheap = []
        with Client(target, timeout=60) as c:
            c.execute(fast, {"x": x_fast})
            time.sleep(max(0.0, start_at - time.monotonic()))
            cpu0 = cpu_seconds(proc.pid)
            while time.monotonic() < stop_at:
                t = time.perf_counter()
                c.execute(fast, {"x": x_fast})
                cheap.append((time.perf_counter() - t) * 1e3)
        lat: dict[str, list[float]] = {}
        compute: list[float] = []
        for _ in procs:
            part_lat, part_compute = results.get()
            for code, v in part_lat.items():
                lat.setdefault(code, []).extend(v)
            compute += part_compute
        for p in procs:
            p.join()
        cpu = cpu_seconds(proc.pid) - cpu0
        with Client(target, timeout=60) as admin:
            executions = {w.name: w.executions for w in admin.device_status().workspaces}[slow_ws] - executions0
    finally:
        proc.terminate()
        proc.wait()

    n_slow = sum(len(v) for v in lat.values())
    ok = len(lat.get("OK", []))
    out = {"one execution ms (idle)": one, "slow requests": n_slow, "slow requests / s": n_slow / a.seconds}
    for code in CODES + tuple(sorted(set(lat) - set(CODES))):
        v = lat.get(code, [])
        out[f"{code} count"] = len(v)
        out[f"{code} p50 ms"] = pct(v, 50)
        out[f"{code} p99 ms"] = pct(v, 99)
    out.update({
        "slow lane executions": executions,
        "lane capacity (s / exec)": a.seconds * 1e3 / one,
        "wasted executions (- OK)": executions - ok,
        "mean compute ms of OK": float(np.mean(compute)) if compute else float("nan"),
        "cheap idle p50 ms": pct(idle, 50), "cheap idle p99 ms": pct(idle, 99),
        "cheap flood p50 ms": pct(cheap, 50), "cheap flood p99 ms": pct(cheap, 99),
        "cheap flood/idle p50": pct(cheap, 50) / pct(idle, 50),
        "cheap flood/idle p99": pct(cheap, 99) / pct(idle, 99),
        "cheap requests in flood": len(cheap),
        "daemon CPU s": cpu,
        "daemon CPU ms / request": cpu * 1e3 / max(1, n_slow + len(cheap)),
        "daemon CPU ms / OK": cpu * 1e3 / ok if ok else float("nan"),
    })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the flood")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--processes", type=int, default=4, help="client processes the flood's threads are spread over")
    ap.add_argument("--deadline-ms", type=float, default=50.0)
    ap.add_argument("--backoff-ms", type=float, default=0.0,
                    help="a flood client waits this long after a RESOURCE_EXHAUSTED (0: retries at once)")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="rows per slow request")
    ap.add_argument("--idle-seconds", type=float, default=3.0, help="cheap model timed alone for this long")
    ap.add_argument("--before-commit", default="002a11b", help="the commit before early shedding")
    ap.add_argument("--before-dir", default="/tmp/memserve-before", help="where its tree is (or is exported to)")
    ap.add_argument("--after-commit", default="",
                    help="run the 'after' daemon from this commit's tree (exported to /tmp/memserve-SHORT) "
                         "instead of this working tree")
    ap.add_argument("--only", choices=["before", "after"], help="run one daemon only")
    a = ap.parse_args()

    runs: dict[str, dict[str, float]] = {}
    if a.only != "after":
        export(a.before_commit, pathlib.Path(a.before_dir))
        runs[f"before {short(a.before_commit)}"] = scenario(pathlib.Path(a.before_dir), a)
    if a.only != "before":
        if a.after_commit:
            tree = pathlib.Path(f"/tmp/memserve-{short(a.after_commit)}")
            export(a.after_commit, tree)
            runs[f"after {short(a.after_commit)}"] = scenario(tree, a)
        else:
            runs["after (this tree)"] = scenario(None, a)

    print(f"{a.clients} clients, {a.deadline_ms:g} ms deadlines, {a.seconds:g} s; slow model chain "
          f"{a.width} wide x {a.depth} deep, {a.batch} rows a request; cheap model 16 wide on another lane, "
          f"one client, no deadline; backoff after a refusal {a.backoff_ms:g} ms; --threads 1; load average {os.getloadavg()[0]:.2f}")
    names = list(runs)
    keys = list(dict.fromkeys(k for r in runs.values() for k in r))
    head = f"{'':<28}" + "".join(f"{n:>20}" for n in names) + (f"{'after/before':>14}" if len(names) == 2 else "")
    print(head)
    for k in keys:
        vals = [runs[n].get(k, float("nan")) for n in names]
        row = f"{k:<28}" + "".join(f"{v:>20.0f}" if float(v).is_integer() else f"{v:>20.2f}"
                                   for v in vals)
        if len(vals) == 2:
            b, x = vals
            row += f"{x / b:>14.2f}" if b and np.isfinite(b) and np.isfinite(x) else f"{'-':>14}"
        print(row)


if __name__ == "__main__":
    main()
