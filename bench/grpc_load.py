"""Closed-loop gRPC load for ``bench/serving.py``: ``Predict`` calls through the generated stubs.

``wrk`` speaks HTTP/1.1 only, so the gRPC row's load comes from here: ``processes`` Python
processes (as wrk runs 2 threads), each with ``concurrency / processes`` calls in flight at all
times, spread over channels of their own (one TCP connection each, so that the kernel can hand
them to different server workers), cycling through the same records as the HTTP points. A call
that ends with any code but OK counts as an error. The load generator is Python: its own cost
bounds what it can send, which the table says beside the figure.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# In-flight calls share a channel in groups of this size (HTTP/2 streams on one connection).
CALLS_PER_CHANNEL = 8


@dataclass(frozen=True)
class Load:
    """What one run measured, summed over its processes."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _percentile(sorted_ms: list[float], share: float) -> float:
    if not sorted_ms:
        return math.nan
    return sorted_ms[min(len(sorted_ms) - 1, int(share * len(sorted_ms)))]


async def _drive(
    target: str, concurrency: int, seconds: float, bodies: list[str]
) -> dict[str, Any]:
    import grpc
    from google.protobuf import struct_pb2

    from driftloop_grpc.v1 import model_service_pb2 as pb
    from driftloop_grpc.v1 import model_service_pb2_grpc as pb_grpc

    requests = []
    for body in bodies:
        struct = struct_pb2.Struct()
        struct.update(json.loads(body))
        requests.append(pb.PredictRequest(features=struct))
    channels = [
        # A local subchannel pool: each channel keeps a connection of its own.
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, math.ceil(concurrency / CALLS_PER_CHANNEL)))
    ]
    stubs = [pb_grpc.ModelServiceStub(channel) for channel in channels]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def caller(number: int) -> None:
        nonlocal errors
        stub = stubs[number % len(stubs)]
        index = number
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                await stub.Predict(requests[index % len(requests)], timeout=10)
                latencies.append((time.perf_counter() - began) * 1000)
            except grpc.aio.AioRpcError:
                errors += 1
            index += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - began
    for channel in channels:
        await channel.close()
    return {"latencies": latencies, "errors": errors, "seconds": elapsed}


def _process(target: str, concurrency: int, seconds: float, bodies: list[str]) -> dict[str, Any]:
    return asyncio.run(_drive(target, concurrency, seconds, bodies))


def run(target: str, concurrency: int, seconds: float, bodies: Path, processes: int = 2) -> Load:
    """``concurrency`` calls in flight against ``target`` for ``seconds``, from ``processes``."""
    lines = [line for line in bodies.read_text().splitlines() if line.strip()]
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        results = list(
            pool.map(
                _process, [target] * processes, shares, [seconds] * processes, [lines] * processes
            )
        )
    latencies = sorted(ms for result in results for ms in result["latencies"])
    errors = sum(int(result["errors"]) for result in results)
    return Load(
        requests=len(latencies) + errors,
        errors=errors,
        seconds=max(float(result["seconds"]) for result in results),
        p50_ms=_percentile(latencies, 0.50),
        p95_ms=_percentile(latencies, 0.95),
        p99_ms=_percentile(latencies, 0.99),
    )
