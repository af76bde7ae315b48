"""What answers on the test cluster's pod addresses, inside the pod network's namespace
(tests/k8s/pod_network.py): a stand-in for the Bento's server, one per address, all in this process.

It answers what the rollout and the tests use, the way driftloop's service does: ``/livez`` and
``/readyz``; ``POST /predict`` (with the pod's image as ``model_version``); and ``/metrics`` with
``driftloop_requests_total{transport,route,status}`` counted by ``prometheus_client``, as
bentos/metrics.py counts them. How a pod answers follows the node agent's rule on its image's tag
(tests/k8s/node_agent.py), which it announces on stdin as ``pod ADDRESS HEALTH IMAGE`` when it
gives a pod its address (a new pod on an address starts with fresh counts):

- ``erroring`` (a tag starting with ``errors``): ready, never restarts, but every other prediction
  is answered 500;
- ``unready``: ``/readyz`` answers 503;
- anything else answers every prediction 200.

Stops when stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

PORT = 3000


@dataclass
class Pod:
    health: str
    image: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    predictions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "driftloop_requests",
            "Requests to the API routes, by transport, route and status (HTTP code or gRPC code)",
            ["transport", "route", "status"],
            registry=self.registry,
        )


PODS: dict[str, Pod] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _pod(self) -> Pod | None:
        return PODS.get(self.connection.getsockname()[0])

    def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        pod = self._pod()
        if self.path == "/livez":
            self._answer(200, b"\n", "text/plain")
        elif pod is None:
            self._answer(404, b'{"error": "no pod on this address"}')
        elif self.path == "/readyz":
            ready = pod.health != "unready"
            self._answer(200 if ready else 503, b"\n", "text/plain")
        elif self.path == "/metrics":
            self._answer(200, generate_latest(pod.registry), "text/plain; version=0.0.4")
        else:
            self._answer(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        pod = self._pod()
        if pod is None or self.path != "/predict":
            self._answer(404, b'{"error": "not found"}')
            return
        with pod.lock:
            pod.predictions += 1
            failing = pod.health == "erroring" and pod.predictions % 2 == 0
        status = 500 if failing else 200
        pod.requests.labels("http", "/predict", str(status)).inc()
        if failing:
            self._answer(500, b'{"error": "internal server error"}')
        else:
            body = {"score": 0.5, "label": 0, "model_version": pod.image.rpartition(":")[2]}
            self._answer(200, json.dumps(body).encode())


def main() -> None:
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 4 and words[0] == "pod":
            PODS[words[1]] = Pod(health=words[2], image=words[3])
    server.shutdown()


if __name__ == "__main__":
    main()
