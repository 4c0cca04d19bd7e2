"""Load test of `pixelforge serve`: N concurrent clients on loopback for a bounded time against a real server.

The script starts the server itself (`python -m pixelforge.cli serve` under uvicorn, in a subprocess,
on 127.0.0.1 and a free port, the bundled model by default) and stops it at the end. Each client loops:
submit a job (POST /jobs, honouring Retry-After on 429) -> follow it to its final state (polling
GET /jobs/{id} or reading its SSE stream) -> fetch its PNGs -> now and then GET /models and /health ->
repeat. After --seconds no client starts a new job; jobs in flight get --drain more seconds to finish,
and a hard deadline past that kills the server and the script whatever happens.

Reported: requests/s; latency p50/p95/p99 per kind of request; answers by status code (429s apart
from errors); jobs accepted, completed, failed and unfinished; the job bookkeeping checks (ids unique,
every accepted job seen reaching a final state exactly once, n PNGs fetched per completed job, each
PNG's settings naming its own job's seed); the server's RSS (VmRSS of its process) at start, after the
warm-up, at the end, min and max of the periodic samples, and the drift. Three verdict lines follow:
no 5xx, no lost or duplicated job, memory flat within 10% (end against the post-warm-up baseline).

Usage (from the repository root):
    .venv/bin/python bench/serve_load.py                      # 50 clients for 5 minutes, steps 4, n 1
    .venv/bin/python bench/serve_load.py --clients 20 --seconds 60
    .venv/bin/python bench/serve_load.py --json > serve_load.json
    .venv/bin/python bench/serve_load.py --quick              # 5 clients for 15 s: checks the script works
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import httpx
except ImportError:  # pragma: no cover
    sys.exit("bench/serve_load.py needs httpx: pip install 'pixelforge[serve]'")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from pixelforge.images import read_settings  # noqa: E402

API = "/api/v1"
FINAL = ("done", "failed", "cancelled")
ORDER = {"queued": 0, "running": 1, "done": 2, "failed": 2, "cancelled": 2}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- the server --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, from /proc (None once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def start_server(a, port: int, tmp: Path) -> tuple[subprocess.Popen, Path]:
    cmd = [sys.executable, "-m", "pixelforge.cli", "serve", a.model, "--host", "127.0.0.1", "--port", str(port),
           "--max-queue", str(a.max_queue), "--workers", str(a.workers), "--job-timeout", str(a.job_timeout),
           "--db", str(tmp / "ratings.sqlite"), "--runs-dir", str(a.runs_dir or tmp / "runs"), "--device", a.device,
           "--quiet",
           # every client here connects from 127.0.0.1: the per-client bounds must hold them all
           "--max-connections", str(max(256, 4 * a.clients)), "--max-connections-per-client", str(max(32, 4 * a.clients)),
           "--max-streams", str(max(64, a.clients)), "--max-streams-per-client", str(max(8, a.clients))]
    log = tmp / "server.log"
    with open(log, "wb") as f:  # the child keeps its own descriptor
        server = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return server, log


def stop_server(server: subprocess.Popen) -> int | None:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL after 15 s; the exit code."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    return server.returncode


def log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- bookkeeping ---------------------------------------------------------------------------------------
class Stats:
    """Everything the clients observe; one event loop, so no locks."""

    def __init__(self):
        self.latency: dict[str, list[float]] = collections.defaultdict(list)  # kind -> seconds
        self.status: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # kind -> code -> count
        self.transport_errors: collections.Counter = collections.Counter()  # "kind: ExceptionName" -> count
        self.requests = 0
        self.accepted: list[str] = []  # job ids, in order of acceptance
        self.seeds: dict[str, int] = {}  # job id -> the seed it was submitted with
        self.final: dict[str, str] = {}  # job id -> the final status seen
        self.duplicate_finals: list[str] = []  # a job seen reaching a final state twice
        self.extra_events: list[str] = []  # SSE events after the final one
        self.regressions: list[str] = []  # a job whose status went backwards (say done -> running)
        self.lost: dict[str, str] = {}  # job id -> why it never reached a final state here
        self.pngs = 0
        self.pngs_expected = 0
        self.bad_pngs: list[str] = []  # not a PNG, or settings of another job
        self.job_seconds: list[float] = []  # accepted -> final seen (completed jobs)
        self.done_at: list[float] = []  # seconds since the load started, per completed job
        self.t0 = time.monotonic()
        self.rss: list[tuple[float, int]] = []  # (seconds since load start, KiB)

    def record(self, kind: str, seconds: float, code: int) -> None:
        self.requests += 1
        self.latency[kind].append(seconds)
        self.status[kind][code] += 1

    def see_final(self, job_id: str, status: str, t_accepted: float) -> None:
        if job_id in self.final:
            self.duplicate_finals.append(job_id)
            return
        self.final[job_id] = status
        if status == "done":
            self.job_seconds.append(time.monotonic() - t_accepted)
            self.done_at.append(time.monotonic() - self.t0)


class Client:
    """One simulated user: its own RNG, its own seeds (so every image names the job it came from)."""

    def __init__(self, index: int, http: httpx.AsyncClient, stats: Stats, a, stop_at: float, drain_at: float):
        self.i, self.http, self.stats, self.a = index, http, stats, a
        self.stop_at, self.drain_at = stop_at, drain_at
        self.rng = random.Random(1000 + index)
        self.sse = a.follow == "sse" or (a.follow == "mix" and index % 2 == 1)
        self.jobs_started = 0

    async def request(self, kind: str, method: str, url: str, **kw) -> httpx.Response | None:
        t0 = time.monotonic()
        try:
            r = await self.http.request(method, url, **kw)
        except httpx.HTTPError as e:
            self.stats.transport_errors[f"{kind}: {type(e).__name__}"] += 1
            await asyncio.sleep(0.2)
            return None
        self.stats.record(kind, time.monotonic() - t0, r.status_code)
        return r

    async def run(self) -> None:
        # staggered starts, so 50 clients do not submit in the same millisecond
        await asyncio.sleep(self.rng.uniform(0, min(1.0, self.a.seconds / 10)))
        while time.monotonic() < self.stop_at:
            job = await self.submit()
            if job is not None:
                await self.follow(*job)
            if self.rng.random() < self.a.p_models:
                await self.request("models", "GET", f"{API}/models")
            if self.rng.random() < self.a.p_health:
                await self.request("health", "GET", f"{API}/health")

    async def submit(self) -> tuple[str, int, float] | None:
        """POST a job until accepted or out of time; 429s wait their Retry-After."""
        seed = self.i * 10_000_000 + self.jobs_started
        body = {"model": self.a.model_name, "n": self.a.n, "seed": seed, "label": self.rng.randrange(10),
                "options": {"steps": self.a.steps}}
        while time.monotonic() < self.stop_at:
            r = await self.request("submit", "POST", f"{API}/jobs", json=body)
            if r is None:
                continue
            if r.status_code == 202:
                job_id = r.json()["id"]
                self.jobs_started += 1
                self.stats.accepted.append(job_id)
                self.stats.seeds[job_id] = seed
                return job_id, seed, time.monotonic()
            if r.status_code == 429:
                retry_after = r.headers.get("retry-after", "")
                wait = float(retry_after) if retry_after.isdigit() else 1.0
                await asyncio.sleep(max(0.0, min(wait, self.stop_at - time.monotonic())))
                continue
            await asyncio.sleep(0.5)  # an unexpected answer: counted by status; back off a little
        return None

    async def follow(self, job_id: str, seed: int, t_accepted: float) -> None:
        info = await (self.follow_sse(job_id) if self.sse else self.follow_poll(job_id))
        if info is None:
            return
        self.stats.see_final(job_id, info["status"], t_accepted)
        if info["status"] != "done":
            return
        self.stats.pngs_expected += self.a.n
        if len(info["images"]) != self.a.n:
            self.stats.bad_pngs.append(f"{job_id}: {len(info['images'])} image URLs for n={self.a.n}")
        for i, url in enumerate(info["images"]):
            r = await self.request("image", "GET", url)
            if r is None or r.status_code != 200:
                self.stats.lost.setdefault(job_id, f"image {i} answered {r.status_code if r else 'no answer'}")
                continue
            if not r.content.startswith(PNG_SIGNATURE):
                self.stats.bad_pngs.append(f"{job_id}: image {i} is not a PNG")
                continue
            try:
                settings = read_settings(io.BytesIO(r.content))
            except ValueError as e:
                self.stats.bad_pngs.append(f"{job_id}: image {i}: {e}")
                continue
            if settings.get("seed") != seed + i:
                self.stats.bad_pngs.append(f"{job_id}: image {i} has seed {settings.get('seed')}, expected {seed + i}")
                continue
            self.stats.pngs += 1

    def _check_order(self, job_id: str, seen: list[str], status: str) -> None:
        if seen and ORDER[status] < ORDER[seen[-1]]:
            self.stats.regressions.append(f"{job_id}: {seen[-1]} -> {status}")
        seen.append(status)

    async def follow_poll(self, job_id: str) -> dict | None:
        seen: list[str] = []
        while time.monotonic() < self.drain_at:
            r = await self.request("job", "GET", f"{API}/jobs/{job_id}")
            if r is not None:
                if r.status_code == 404:
                    self.stats.lost[job_id] = "404 while followed"
                    return None
                if r.status_code == 200:
                    info = r.json()
                    self._check_order(job_id, seen, info["status"])
                    if info["status"] in FINAL:
                        return info
            await asyncio.sleep(self.a.poll)
        self.stats.lost[job_id] = f"not final {self.a.drain:g} s after the load ended (last seen: {seen[-1] if seen else '-'})"
        return None

    async def follow_sse(self, job_id: str) -> dict | None:
        """Read the event stream to its end: one final event, and nothing after it."""
        seen: list[str] = []
        while time.monotonic() < self.drain_at:
            t0, final = time.monotonic(), None
            try:
                timeout = httpx.Timeout(max(1.0, self.drain_at - time.monotonic()), connect=10.0)
                async with self.http.stream("GET", f"{API}/jobs/{job_id}/events", timeout=timeout) as r:
                    if r.status_code == 404:
                        self.stats.record("events", time.monotonic() - t0, 404)
                        self.stats.lost[job_id] = "404 while followed"
                        return None
                    event = None
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event is not None:
                            if final is not None:
                                self.stats.extra_events.append(f"{job_id}: {event} after {final['status']}")
                                continue
                            info = json.loads(line[6:])
                            self._check_order(job_id, seen, info["status"])
                            if event in FINAL:
                                final = info
                    self.stats.record("events", time.monotonic() - t0, r.status_code)
            except httpx.HTTPError as e:
                self.stats.transport_errors[f"events: {type(e).__name__}"] += 1
            if final is not None:
                return final
            await asyncio.sleep(0.2)  # the stream ended without a final event: reconnect
        self.stats.lost[job_id] = f"not final {self.a.drain:g} s after the load ended (last seen: {seen[-1] if seen else '-'})"
        return None


async def sample_memory(pid: int, stats: Stats, t0: float, every: float, until: float) -> None:
    while time.monotonic() < until:
        kib = rss_kib(pid)
        if kib is None:
            return
        stats.rss.append((time.monotonic() - t0, kib))
        await asyncio.sleep(every)


async def wait_ready(base: str, server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=2.0) as http:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode} before it was ready")
            try:
                r = await http.get(f"{API}/health")
                if r.status_code == 200:
                    models = (await http.get(f"{API}/models")).json()["models"]
                    return {"health": r.json(), "models": [m["name"] for m in models]}
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {timeout:g} s")


async def load(a, base: str, server: subprocess.Popen) -> dict:
    ready = await wait_ready(base, server, a.startup_timeout)
    a.model_name = ready["models"][0]
    stats = Stats()
    rss_start = rss_kib(server.pid)
    cpu_start = cpu_seconds(server.pid)
    t0 = stats.t0 = time.monotonic()
    stop_at, drain_at = t0 + a.seconds, t0 + a.seconds + a.drain
    limits = httpx.Limits(max_connections=2 * a.clients + 8, max_keepalive_connections=2 * a.clients + 8)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30.0, connect=10.0), limits=limits) as http:
        sampler = asyncio.create_task(sample_memory(server.pid, stats, t0, a.sample_every, drain_at))
        clients = [Client(i, http, stats, a, stop_at, drain_at) for i in range(a.clients)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        _, pending = await asyncio.wait(tasks, timeout=a.seconds + a.drain + 5)
        for t in pending:  # past the drain window: whatever is left is abandoned and reported
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()
        load_s = time.monotonic() - t0
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        # the queue must be empty once the clients are done (none left queued or running)
        try:
            end_health = (await http.get(f"{API}/health")).json()
        except httpx.HTTPError:
            end_health = {"queue": None}
    for job_id in stats.accepted:
        if job_id not in stats.final and job_id not in stats.lost:
            stats.lost[job_id] = "abandoned at the hard deadline"
    rss_end = rss_kib(server.pid)
    cpu_end = cpu_seconds(server.pid)
    return report(a, stats, load_s, rss_start, rss_end, end_health, ready,
                  None if cpu_start is None or cpu_end is None else cpu_end - cpu_start)


# --- the report ------------------------------------------------------------------------------------------
def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"count": 0}
    xs = sorted(xs)

    def q(p):  # nearest-rank percentile
        return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]

    return {"count": len(xs), "p50_ms": 1000 * q(50), "p95_ms": 1000 * q(95), "p99_ms": 1000 * q(99),
            "max_ms": 1000 * xs[-1], "mean_ms": 1000 * statistics.fmean(xs)}


def report(a, s: Stats, load_s: float, rss_start, rss_end, end_health, ready, server_cpu) -> dict:
    codes = collections.Counter()
    for c in s.status.values():
        codes.update(c)
    errors = {str(k): v for k, v in sorted(codes.items()) if k >= 400 and k != 429}
    server_5xx = sum(v for k, v in codes.items() if k >= 500)
    outcomes = collections.Counter(s.final.values())
    warm_t = a.warmup
    after_warm = [kib for t, kib in s.rss if t >= warm_t]
    rss_warm = after_warm[0] if after_warm else None
    drift = None if not rss_warm or rss_end is None else 100.0 * (rss_end - rss_warm) / rss_warm
    drift_start = None if not rss_start or rss_end is None else 100.0 * (rss_end - rss_start) / rss_start
    ids_unique = len(set(s.accepted)) == len(s.accepted)
    lost_ok = (not s.lost and not s.duplicate_finals and not s.extra_events and not s.regressions and ids_unique
               and len(s.final) == len(s.accepted) and s.pngs == a.n * outcomes["done"] == s.pngs_expected
               and not s.bad_pngs and end_health["queue"] is not None
               and end_health["queue"]["queued"] == 0 and end_health["queue"]["running"] == 0)
    out = {
        "config": {"clients": a.clients, "seconds": a.seconds, "drain": a.drain, "steps": a.steps, "n": a.n,
                   "workers": a.workers, "max_queue": a.max_queue, "follow": a.follow, "poll_s": a.poll,
                   "model": a.model_name, "device": a.device, "warmup_s": warm_t,
                   "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                   "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "load_seconds": load_s,
        "requests": s.requests,
        "requests_per_s": s.requests / load_s if load_s else 0.0,
        "latency": {kind: percentiles(xs) for kind, xs in sorted(s.latency.items())},
        "job_seconds": percentiles(s.job_seconds),
        "status_codes": {kind: {str(k): v for k, v in sorted(c.items())} for kind, c in sorted(s.status.items())},
        "rate_limited_429": codes[429],
        "errors_by_status": errors,
        "transport_errors": dict(s.transport_errors),
        "jobs": {"accepted": len(s.accepted), "completed": outcomes["done"], "failed": outcomes["failed"],
                 "cancelled": outcomes["cancelled"], "lost": len(s.lost), "ids_unique": ids_unique,
                 "duplicate_finals": len(s.duplicate_finals), "events_after_final": len(s.extra_events),
                 "status_regressions": len(s.regressions), "pngs_fetched": s.pngs,
                 "pngs_expected": a.n * outcomes["done"], "bad_pngs": len(s.bad_pngs),
                 "completed_per_s": outcomes["done"] / load_s if load_s else 0.0,
                 "examples": (list(s.lost.items())[:5] + s.duplicate_finals[:5] + s.extra_events[:5]
                              + s.regressions[:5] + s.bad_pngs[:5])},
        "server_queue_at_end": end_health["queue"],
        "server_cpu_seconds": server_cpu,
        "client_cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
        "memory_mib": {
            "start": _mib(rss_start), "after_warmup": _mib(rss_warm), "end": _mib(rss_end),
            "min": _mib(min((k for _, k in s.rss), default=None)), "max": _mib(max((k for _, k in s.rss), default=None)),
            "samples": len(s.rss), "drift_pct_vs_after_warmup": drift, "drift_pct_vs_start": drift_start,
            "jobs_completed_by_warmup": sum(1 for t in s.done_at if t < warm_t),
        },
        "verdicts": {
            "no_5xx": server_5xx == 0,
            "no_lost_or_duplicated_job": lost_ok,
            "memory_flat_within_10pct": drift is not None and abs(drift) <= 10.0,
        },
    }
    return out


def _mib(kib):
    return None if kib is None else kib / 1024


def print_table(r: dict) -> None:
    c = r["config"]
    print(f"pixelforge serve load: {c['clients']} clients x {c['seconds']:g} s (+ up to {c['drain']:g} s drain), "
          f"{c['model']} steps {c['steps']} n {c['n']}, workers {c['workers']}, max queue {c['max_queue']}, "
          f"follow {c['follow']}, device {c['device']}, cpus {c['cpus']}, OMP_NUM_THREADS {c['omp_num_threads']}")
    print(f"load phase {r['load_seconds']:.1f} s: {r['requests']} requests, {r['requests_per_s']:.1f} requests/s; "
          f"server CPU {_fmt(r['server_cpu_seconds'], '.1f')} s, client CPU {r['client_cpu_seconds']:.1f} s")
    print()
    print(f"{'kind':<8} {'count':>7} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'max ms':>9}  status codes")
    rows = dict(r["latency"])
    rows["job e2e"] = r["job_seconds"]
    for kind, p in rows.items():
        codes = ", ".join(f"{k}: {v}" for k, v in r["status_codes"].get(kind, {}).items()) if kind != "job e2e" else "accepted -> done seen"
        if not p["count"]:
            continue
        print(f"{kind:<8} {p['count']:>7} {p['p50_ms']:>9.1f} {p['p95_ms']:>9.1f} {p['p99_ms']:>9.1f} {p['max_ms']:>9.1f}  {codes}")
    print("(submit counts every POST, 429s included; events is a whole SSE stream, open to final event)")
    print()
    print(f"429 (queue full, retried after Retry-After): {r['rate_limited_429']}")
    print(f"errors by status (4xx/5xx but 429): {r['errors_by_status'] or 'none'}; "
          f"transport errors: {r['transport_errors'] or 'none'}")
    j = r["jobs"]
    print(f"jobs: accepted {j['accepted']}, completed {j['completed']} ({j['completed_per_s']:.2f}/s), failed {j['failed']}, "
          f"cancelled {j['cancelled']}, lost {j['lost']}; ids unique {j['ids_unique']}, final seen twice {j['duplicate_finals']}, "
          f"SSE events after final {j['events_after_final']}, status went backwards {j['status_regressions']}; "
          f"PNGs fetched {j['pngs_fetched']} of {j['pngs_expected']} (n per completed job), bad {j['bad_pngs']}")
    for example in j["examples"]:
        print(f"  {example}")
    print(f"server queue at the end: {r['server_queue_at_end']}")
    m = r["memory_mib"]
    print(f"server RSS MiB: start {_fmt(m['start'])}, after warm-up ({c['warmup_s']:g} s) {_fmt(m['after_warmup'])}, "
          f"end {_fmt(m['end'])}; min {_fmt(m['min'])}, max {_fmt(m['max'])} over {m['samples']} samples; "
          f"drift {_fmt(m['drift_pct_vs_after_warmup'], '+.1f')}% vs after warm-up, "
          f"{_fmt(m['drift_pct_vs_start'], '+.1f')}% vs start")
    print(f"  jobs completed by the end of the warm-up: {m['jobs_completed_by_warmup']} (the server keeps the newest 100 "
          "finished jobs and their PNGs: a baseline read before 100 had finished still sees that store fill)")
    print()
    v = r["verdicts"]
    print(f"verdict: no 5xx: {'PASS' if v['no_5xx'] else 'FAIL'} "
          f"({sum(n for k, n in r['errors_by_status'].items() if int(k) >= 500)} answers >= 500)")
    print(f"verdict: no lost or duplicated job: {'PASS' if v['no_lost_or_duplicated_job'] else 'FAIL'} "
          f"({j['accepted']} accepted, {j['completed'] + j['failed'] + j['cancelled']} reached a final state once, {j['lost']} lost)")
    print(f"verdict: memory flat within 10%: {'PASS' if v['memory_flat_within_10pct'] else 'FAIL'} "
          f"(end vs the post-warm-up baseline at {c['warmup_s']:g} s: {_fmt(m['drift_pct_vs_after_warmup'], '+.1f')}%)")


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


# --- the command -----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run from the repository root on an otherwise idle machine; the server inherits this "
                                "process's CPU affinity and OMP_NUM_THREADS.")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default 50)")
    p.add_argument("--seconds", type=float, default=None, help="seconds during which clients start jobs (default 300)")
    p.add_argument("--drain", type=float, default=None, help="seconds jobs in flight then get to finish (default 60)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds after which the memory baseline is read (default 20%% of --seconds)")
    p.add_argument("--steps", type=int, default=4, help="sampler steps per job (default 4)")
    p.add_argument("--n", type=int, default=1, help="images per job (default 1)")
    p.add_argument("--workers", type=int, default=1, help="the server's --workers (default 1)")
    p.add_argument("--max-queue", type=int, default=16, help="the server's --max-queue (default 16)")
    p.add_argument("--job-timeout", type=float, default=120.0, help="the server's --job-timeout (default 120)")
    p.add_argument("--model", default="mnist-diffusion", help="run or bundled model to serve (default mnist-diffusion)")
    p.add_argument("--runs-dir", default=None, help="the server's --runs-dir (default: an empty temporary folder, "
                   "so a bundled model is served whatever ./runs holds)")
    p.add_argument("--device", default="cpu", help="the server's --device (default cpu)")
    p.add_argument("--follow", choices=["poll", "sse", "mix"], default="mix",
                   help="how clients follow a job: poll GET /jobs/{id}, read its SSE stream, or half each (default mix)")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between polls (default 0.2)")
    p.add_argument("--p-models", type=float, default=0.2, help="chance of a GET /models after each job (default 0.2)")
    p.add_argument("--p-health", type=float, default=0.2, help="chance of a GET /health after each job (default 0.2)")
    p.add_argument("--sample-every", type=float, default=1.0, help="seconds between RSS samples (default 1)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds the server may take to answer /health")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 clients for 15 s, 10 s drain (explicit flags win)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = p.parse_args(argv)
    for name, full, quick in (("clients", 50, 5), ("seconds", 300.0, 15.0), ("drain", 60.0, 10.0)):
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)
    if a.clients < 1 or a.seconds <= 0 or a.drain < 0 or a.n < 1 or a.steps < 1:
        p.error("--clients, --seconds, --n and --steps must be positive and --drain not negative")
    if a.warmup is None:
        a.warmup = 0.2 * a.seconds
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    # the hard deadline: startup, the load, the drain and the report, with a margin; past it the
    # server is killed and this process exits whatever it is doing
    hard_deadline_s = a.startup_timeout + a.seconds + a.drain + 60
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pixelforge-serve-load-") as tmp:
        server, log = start_server(a, port, Path(tmp))

        def overrun():
            print(f"hard deadline of {hard_deadline_s:g} s passed: killing the server", file=sys.stderr)
            server.kill()
            os._exit(3)

        watchdog = threading.Timer(hard_deadline_s, overrun)
        watchdog.daemon = True
        watchdog.start()
        try:
            result = asyncio.run(load(a, f"http://127.0.0.1:{port}", server))
        except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as e:
            print(f"load test failed: {type(e).__name__}: {e}\n--- server log (tail) ---\n{log_tail(log)}", file=sys.stderr)
            return 2
        finally:
            code = stop_server(server)
            watchdog.cancel()
        result["server_exit_code"] = code
        result["server_log_tail"] = log_tail(log, 10)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
        why = " (SIGTERM re-raised by uvicorn after its graceful shutdown)" if code == -signal.SIGTERM else ""
        print(f"server exit code after SIGTERM: {code}{why}")
    return 0 if all(result["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
