"""Benchmark of hami-webhook: latency at a fixed request rate over TLS on loopback.

Starts the real ``hami-webhook`` process with a certificate made for the run (trustme), then sends
AdmissionReviews at a fixed rate (open loop: request i is due at start + i/rate, whether or not
earlier ones have been answered) over keep-alive HTTPS connections, and reports latency
percentiles. Latency is measured from the moment a request was due, so a stalled server or a
lagging client shows up in the numbers instead of being hidden (no coordinated omission).

The corpus mixes the reviews a cluster sends: GPU pods that get patched, pods without GPUs, a
Vulkan pod, a denied privileged pod, a pod setting an interposer variable. ``--path /validate`` sends the
same corpus to the tenant guard (which every pod of the cluster goes through). Exit status 1 when p99
exceeds --p99-ms or any request fails.

    .venv/bin/python services/webhook/bench/bench_webhook.py --rate 500 --duration 30 [--path /validate]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import platform
import resource
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trustme

SCRIPT = pathlib.Path(sys.executable).with_name("hami-webhook")


def corpus() -> list[bytes]:
    def review(uid: str, containers: list[dict[str, Any]], annotations: dict[str, str] | None = None) -> bytes:
        metadata: dict[str, Any] = {"name": uid, "namespace": "bench", "annotations": annotations or {}}
        spec = {"schedulerName": "default-scheduler", "containers": containers}
        return json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": uid,
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "bench",
                    "operation": "CREATE",
                    "userInfo": {"username": "bench"},
                    "object": {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec},
                },
            }
        ).encode()

    def container(limits: dict[str, str], **extra: Any) -> dict[str, Any]:
        return {"name": "main", "image": "cuda:12", "resources": {"limits": limits, "requests": dict(limits)}, **extra}

    return [
        review("gpumem", [container({"nvidia.com/gpumem": "8000", "cpu": "1"})]),
        review("whole-card", [container({"nvidia.com/gpu": "1"})]),
        review(
            "shared", [container({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4000", "nvidia.com/gpucores": "30"})]
        ),
        review("no-gpu", [container({"cpu": "500m", "memory": "1Gi"})]),
        review("no-gpu-2", [container({"cpu": "1"}), container({"memory": "64Mi"})]),
        review("vulkan", [container({"nvidia.com/gpumem": "2000"})], {"hami.io/vulkan": "true"}),
        review("priority", [container({"nvidia.com/gpu": "1", "nvidia.com/priority": "0"})]),
        review("privileged", [container({"nvidia.com/gpu": "1"}, securityContext={"privileged": True})]),
        review("env-attack", [container({"cpu": "1"}, env=[{"name": "CUDA_DEVICE_MEMORY_LIMIT", "value": "80g"}])]),
    ]


@contextlib.asynccontextmanager
async def webhook_process(workdir: pathlib.Path, ca: trustme.CA) -> AsyncIterator[tuple[int, int]]:
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(workdir / "tls.crt"))
    cert.private_key_pem.write_to_path(str(workdir / "tls.key"))
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "--cert-file",
        str(workdir / "tls.crt"),
        "--key-file",
        str(workdir / "tls.key"),
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "info",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert process.stderr is not None
    port = None
    seen: list[bytes] = []
    while line := await asyncio.wait_for(process.stderr.readline(), 60):
        seen.append(line)
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "serving":
            port = int(entry["addresses"][0].rsplit(":", 1)[1])
            break
    if port is None:
        raise SystemExit(f"hami-webhook did not start: {b''.join(seen).decode(errors='replace')}")
    drain = asyncio.create_task(_drain(process.stderr))
    try:
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        await drain


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


class KeepAliveConnection:
    """One keep-alive TLS connection of a sending thread, opened on first use and again after an error."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self._tls: ssl.SSLSocket | None = None
        self._reader: Any = None

    def connect(self) -> None:
        if self._tls is None:
            raw = socket.create_connection(("127.0.0.1", self.port))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._tls = self.context.wrap_socket(raw, server_hostname="127.0.0.1")
            self._reader = self._tls.makefile("rb")

    def exchange(self, request: bytes) -> bool:
        """Send one request and read its answer: whether it was a 200 carrying the review's uid."""
        assert self._tls is not None
        self._tls.sendall(request)
        status_line = self._reader.readline()
        length = 0
        while (header := self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = self._reader.read(length)
        return bool(status_line.startswith(b"HTTP/1.1 200") and b'"uid"' in answer)

    def close(self) -> None:
        if self._tls is not None:
            self._tls.close()
        self._tls = None


class OpenLoop:
    """The schedule of an open-loop load (request i is due at start + i/rate) and what it measured. Any free
    sending thread takes the next request; its latency counts from when it was due."""

    def __init__(self, requests: list[bytes], *, rate: float, duration: float, warmup: float) -> None:
        self.requests = requests
        self.rate = rate
        self.total = int((warmup + duration) * rate)
        self.first_measured = int(warmup * rate)
        self.latencies: list[float] = []
        self.service_times: list[float] = []
        self.errors = 0
        self._next_index = 0
        self._lock = threading.Lock()
        self.start = time.perf_counter() + 0.2

    def take(self) -> int | None:
        """The next request's index, waiting until it is due; None when all were sent."""
        with self._lock:
            index = self._next_index
            self._next_index += 1
        if index >= self.total:
            return None
        delay = self.start + index / self.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        return index

    def record(self, index: int, sent: float, finished: float, ok: bool) -> None:
        if index >= self.first_measured:
            with self._lock:
                self.latencies.append(finished - (self.start + index / self.rate))
                self.service_times.append(finished - sent)
                self.errors += 0 if ok else 1

    def worker(self, connection: KeepAliveConnection) -> None:
        while (index := self.take()) is not None:
            ok = False
            sent = time.perf_counter()
            try:
                connection.connect()
                sent = time.perf_counter()  # service time starts here: after any reconnect
                ok = connection.exchange(self.requests[index % len(self.requests)])
            except OSError:
                connection.close()
            self.record(index, sent, time.perf_counter(), ok)
        connection.close()


def http_requests(path: str, port: int) -> list[bytes]:
    """The corpus as raw HTTP/1.1 requests."""
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in corpus()
    ]


def run_load(
    port: int,
    context: ssl.SSLContext,
    *,
    rate: float,
    duration: float,
    warmup: float,
    connections: int,
    path: str = "/mutate",
) -> tuple[list[float], list[float], int, float]:
    """Send at a fixed rate from ``connections`` threads, each with one keep-alive TLS connection.

    Blocking sockets keep the load generator cheap (TLS and socket I/O run in C without the GIL),
    so it measures the webhook rather than itself. A request is taken by whichever thread is free;
    its latency counts from when it was due. The service time (from send to answer) is returned too:
    it leaves out delays of the load generator itself, for telling them apart from the server's.
    """
    load = OpenLoop(http_requests(path, port), rate=rate, duration=duration, warmup=warmup)
    # Hand the GIL over quickly: a thread whose answer has arrived must not wait out the default 5 ms
    # switch interval behind another thread's parsing, or the generator adds its own tail to the numbers.
    sys.setswitchinterval(0.0002)
    threads = [
        threading.Thread(target=load.worker, args=(KeepAliveConnection(port, context),), name=f"load-{i}")
        for i in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - load.start - warmup
    return load.latencies, load.service_times, load.errors, elapsed


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process, from /proc/<pid>/stat."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_histogram_p99(port: int, context: ssl.SSLContext) -> float:
    """Upper bound of the request-duration bucket holding the server's own p99 (from /metrics)."""
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        text = b"".join(iter(lambda: tls.recv(65536), b"")).decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("hami_webhook_request_duration_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1]
    return next(bound for bound, count in buckets if count >= 0.99 * total)


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass(frozen=True)
class Measurement:
    """One run: latencies (from when each request was due) and service times in ms, sorted; CPU per request."""

    ms: list[float]
    service_ms: list[float]
    errors: int
    elapsed: float
    server_cpu: float  # seconds per request sent
    client_cpu: float
    in_server_p99: float  # seconds: upper bound of the histogram bucket
    load_before: float


async def measure(args: argparse.Namespace, context: ssl.SSLContext, ca: trustme.CA) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="hami-webhook-bench-") as tmp:
        async with webhook_process(pathlib.Path(tmp), ca) as (port, pid):
            load_before = os.getloadavg()[0]
            server_cpu_before, client_cpu_before = process_cpu_seconds(pid), own_cpu_seconds()
            latencies, service_times, errors, elapsed = await asyncio.to_thread(
                run_load,
                port,
                context,
                rate=args.rate,
                duration=args.duration,
                warmup=args.warmup,
                connections=args.connections,
                path=args.path,
            )
            sent = int((args.warmup + args.duration) * args.rate)
            server_cpu = (process_cpu_seconds(pid) - server_cpu_before) / sent
            client_cpu = (own_cpu_seconds() - client_cpu_before) / sent
            in_server_p99 = server_histogram_p99(port, context)
    ms = sorted(value * 1000 for value in latencies)
    service_ms = sorted(value * 1000 for value in service_times)
    return Measurement(ms, service_ms, errors, elapsed, server_cpu, client_cpu, in_server_p99, load_before)


def report_rows(args: argparse.Namespace, m: Measurement) -> list[tuple[str, str]]:
    ms = m.ms
    return [
        ("machine", f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"),
        (
            "target rate",
            f"{args.rate:.0f} req/s for {args.duration:.0f} s (+{args.warmup:.0f} s warm-up), TLS, loopback",
        ),
        ("achieved rate", f"{len(ms) / m.elapsed:.1f} req/s"),
        ("requests", str(len(ms))),
        ("errors", str(m.errors)),
        ("p50", f"{percentile(ms, 0.50):.2f} ms"),
        ("p90", f"{percentile(ms, 0.90):.2f} ms"),
        ("p99", f"{percentile(ms, 0.99):.2f} ms"),
        ("p99.9", f"{percentile(ms, 0.999):.2f} ms"),
        ("max", f"{ms[-1]:.2f} ms"),
        ("mean", f"{statistics.fmean(ms):.2f} ms"),
        ("server CPU per request", f"{m.server_cpu * 1e6:.0f} us"),
        ("load generator CPU per request", f"{m.client_cpu * 1e6:.0f} us"),
        ("p99 from send (excludes load-generator delays)", f"{percentile(m.service_ms, 0.99):.2f} ms"),
        ("p99 inside the server (histogram bucket)", f"<= {m.in_server_p99 * 1000:g} ms"),
        ("1-min load average, start / end", f"{m.load_before:.2f} / {os.getloadavg()[0]:.2f}"),
    ]


async def main_async(args: argparse.Namespace) -> int:
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    m = await measure(args, context, ca)
    print(f"| hami-webhook POST {args.path} | |")
    print("|---|---|")
    for name, value in report_rows(args, m):
        print(f"| {name} | {value} |")
    p99 = percentile(m.ms, 0.99)
    passed = p99 <= args.p99_ms and m.errors == 0
    print(
        f"\nbench-webhook: {'PASS' if passed else 'FAIL'} (p99 {p99:.2f} ms, limit {args.p99_ms} ms; errors {m.errors})"
    )
    return 0 if passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds sent before measuring")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (sending threads)")
    parser.add_argument(
        "--path", choices=("/mutate", "/validate"), default="/mutate", help="endpoint (mutation or tenant guard)"
    )
    parser.add_argument("--p99-ms", type=float, default=5.0, help="fail when p99 latency exceeds this")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
