"""Serving speed and memory: `captioner serve` under 1 and 16 clients, against the same photos
captioned in-process (the bound) and against the server with batching off.

In one run, bounded in requests and in time, one photo per request, Flickr8k test photos in turn:
  bound       Captioner.caption on the photos, batches of 32, in this process (no HTTP)
  batched     `python -m captioner serve` (default batching: --max-batch 32 --batch-wait-ms 5):
              1 client for the first --first requests, then --clients at once for the rest of
              --requests; the server's RSS (VmRSS) before, after the first, and at the end
  off         the server with --max-batch 1: every photo its own model call, one at a time

    python scripts/bench_serve.py                          # ../shared/flickr8k, 2,000 requests
    python scripts/bench_serve.py --requests 400 --max-seconds 60
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BOUNDARY = "captioner-bench-b0undary"


def multipart(name: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`python -m captioner serve` on a free port, its output in a log file."""

    def __init__(self, *options: str):
        self.port = free_port()
        self.log = open(f"/tmp/bench_serve.{self.port}.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "captioner", "serve", "--port", str(self.port)]
        self.process = subprocess.Popen([*command, *options], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/health", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"the server did not start: see {self.log.name}")

    def health(self) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/health"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.loads(answer.read())

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def load(port: int, bodies: list[bytes], clients: int, requests: int, max_seconds: float):
    """`requests` POSTs from `clients` threads (keep-alive connections), bodies in turn.
    Returns (latencies in s, errors, wall seconds)."""
    latencies, errors, lock = [], [0], threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for number in counter:
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            try:
                connection.request("POST", "/api/caption", bodies[number % len(bodies)], headers)
                answer = connection.getresponse()
                ok = answer.status == 200 and json.loads(answer.read())["captions"]
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                latencies.append(time.perf_counter() - started)
                errors[0] += not ok
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0], time.perf_counter() - started


def row(label: str, clients: int, result) -> dict:
    latencies, errors, seconds = result
    ordered = sorted(latencies) or [float("nan")]

    def percentile(p):
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    photos_per_s = (len(latencies) - errors) / seconds
    print(
        f"{label:34} {clients:>7} {len(latencies):>8} {errors:>6} {photos_per_s:>9.1f} "
        f"{percentile(50):>8.0f} {percentile(95):>8.0f} {percentile(99):>8.0f}",
        flush=True,
    )
    return {"photos_per_s": photos_per_s, "requests": len(latencies), "errors": errors}


def bound(paths: list[Path], count: int) -> float:
    """Photos per second of Captioner.caption, batched, in this process."""
    from captioner import Captioner

    captioner = Captioner.load()
    captioner.warm_up()
    captioner.caption(paths[:32])  # the batch size of 32, compiled outside the timing
    started = time.perf_counter()
    for start in range(0, count, 256):
        captioner.caption(paths[start : min(count, start + 256)])
    seconds = time.perf_counter() - started
    del captioner
    gc.collect()
    return count / seconds


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default="../shared/flickr8k", help="the dataset folder")
    parser.add_argument("--requests", type=int, default=2000, help="to the batched server")
    parser.add_argument("--first", type=int, default=100, help="of them from one client")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--off-requests", type=int, default=400, help="to the unbatched one")
    parser.add_argument("--bound-photos", type=int, default=500)
    parser.add_argument("--max-seconds", type=float, default=600, help="per phase")
    args = parser.parse_args()

    from captioner.data.datasets import load_dataset

    dataset = load_dataset(args.data)
    paths = [dataset.image_path(name) for name in dataset.splits["test"]]
    bodies = [multipart(p.name, p.read_bytes()) for p in paths]
    print(f"{len(paths)} test photos from {args.data}; {os.cpu_count()} CPUs", flush=True)

    bound_rate = bound(paths * 2, min(args.bound_photos, 2 * len(paths)))
    print(f"{'what':34} {'clients':>7} {'requests':>8} {'errors':>6} {'photos/s':>9} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")  # fmt: skip
    print(f"{'bound: Captioner.caption, batch 32':34} {'-':>7} {args.bound_photos:>8} "
          f"{0:>6} {bound_rate:>9.1f}", flush=True)  # fmt: skip

    server = Server()
    rss = {"start": rss_mb(server.process.pid)}
    first = row("batched server", 1, load(server.port, bodies, 1, args.first, args.max_seconds))
    rss["first"] = rss_mb(server.process.pid)
    before = server.health()["served"]
    rest = args.requests - args.first
    many = load(server.port, bodies[args.first :] + bodies, args.clients, rest, args.max_seconds)
    batched = row("batched server", args.clients, many)
    rss["end"] = rss_mb(server.process.pid)
    after = server.health()["served"]
    server.stop()

    server = Server("--max-batch", "1")
    one_off = args.off_requests // 4
    row("batching off (--max-batch 1)", 1, load(server.port, bodies, 1, one_off, args.max_seconds))
    rest_off = args.off_requests - one_off
    off = load(server.port, bodies, args.clients, rest_off, args.max_seconds)
    unbatched = row("batching off (--max-batch 1)", args.clients, off)
    server.stop()

    total = first["requests"] + batched["requests"]
    photos, calls = (after[k] - before[k] for k in ("photos", "batches"))
    print(f"\nbatched server, {args.clients} clients: {photos} photos in {calls} model calls "
          f"({photos / max(calls, 1):.1f} per call)")  # fmt: skip
    print(f"server RSS: {rss['start']:.0f} MB at start, {rss['first']:.0f} MB after "
          f"{first['requests']} requests, {rss['end']:.0f} MB after {total}")  # fmt: skip
    ratios = [
        ("16 clients / in-process bound", batched["photos_per_s"] / bound_rate, ">= 0.60"),
        ("16 clients / batching off", batched["photos_per_s"] / unbatched["photos_per_s"], ">= 3"),
        (f"RSS after {total} / after {first['requests']}", rss["end"] / rss["first"], "<= 1.10"),
    ]
    for label, value, target in ratios:
        low = target.startswith(">=")
        met = value >= float(target[3:]) if low else value <= float(target[3:])
        print(f"{label:34} {value:6.2f}  (target {target}: {'met' if met else 'NOT met'})")


if __name__ == "__main__":
    main()
