"""Where the test cluster's pods answer: a network namespace of the tests' own, reached from this
machine over a veth pair, with one small HTTP server (tests/k8s/pod_server.py) answering on every
pod's address.

The API server proxies to a pod's address (``pods/NAME:PORT/proxy/...``) and, for a Service, to
one of its ready endpoints; it refuses loopback addresses, and so does the Endpoints API. So the
pods get addresses of 198.18.0.0/15 (the range set aside for benchmarking networks) inside a
namespace made here: a /24 that this machine routes nowhere yet, its upper half made local to the
namespace (any address there is the pod server's), routed from here through the veth pair. Nothing
sent to those addresses can leave the machine: the only route to them ends in the namespace, and
it is checked (``ip route get``) before any pod gets an address, and removed with the namespace.

Needs root (``ip netns``) and ``ip`` (iproute2; ``make k8s-test-tools``).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

POD_PORT = 3000
ROOT = Path(__file__).resolve().parents[2]


def _ip(*args: str, namespace: str | None = None) -> str:
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout


def missing() -> str | None:
    """Why the pod network cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "ip (iproute2)"
    if os.geteuid() != 0:
        return "root (for ip netns)"
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    taken = _ip("-4", "route", "show", "table", "all") + _ip("-4", "addr", "show")
    candidates = list(ipaddress.ip_network("198.18.0.0/15").subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        prefix = ".".join(str(subnet.network_address).split(".")[:3]) + "."
        if prefix not in taken:
            return subnet
    raise RuntimeError("no free /24 in 198.18.0.0/15")


class PodNetwork:
    """The namespace, its veth pair, its routes and the pod server; :meth:`close` removes them."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.namespace = f"driftloop-pods-{tag}"
        self.host_link, self.pod_link = f"dlh{tag}", f"dlp{tag}"
        subnet = _free_subnet()
        hosts = list(subnet.hosts())
        self.host_address, self.gateway = str(hosts[0]), str(hosts[1])
        self.pods = list(ipaddress.ip_network(f"{subnet.network_address + 128}/25").hosts())
        self.pod_range = f"{subnet.network_address + 128}/25"
        self._next = 0
        self.server: subprocess.Popen[str] | None = None
        _ip("netns", "add", self.namespace)
        try:
            self._link(subnet)
            self._start_server()
        except BaseException:
            self.close()
            raise

    def _link(self, subnet: ipaddress.IPv4Network) -> None:
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.pod_link)
        _ip("link", "set", self.pod_link, "netns", self.namespace)
        _ip("addr", "add", f"{self.host_address}/{subnet.prefixlen}", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        ns = self.namespace
        _ip("addr", "add", f"{self.gateway}/{subnet.prefixlen}", "dev", self.pod_link, namespace=ns)
        _ip("link", "set", self.pod_link, "up", namespace=ns)
        _ip("link", "set", "lo", "up", namespace=ns)
        # Every address of the upper half is the namespace's own (the pod server binds 0.0.0.0).
        _ip("route", "add", "local", self.pod_range, "dev", "lo", namespace=ns)
        _ip("route", "add", self.pod_range, "via", self.gateway, "dev", self.host_link)
        # The guard: traffic to a pod address goes into the namespace and nowhere else.
        route = _ip("route", "get", str(self.pods[0]))
        if f"dev {self.host_link}" not in route:
            raise RuntimeError(f"pod addresses would not be routed to the namespace: {route}")

    def _start_server(self) -> None:
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "tests.k8s.pod_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        if not line.startswith("listening"):
            raise RuntimeError(f"the pod server did not start: {line!r}")
        # Reach it from this namespace, through the veth pair (an address no pod has yet).
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://{self.pods[-1]}:{POD_PORT}/livez", timeout=2)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def address(self) -> str:
        """The next pod address (round-robin over the upper half of the /24)."""
        address = self.pods[self._next % (len(self.pods) - 1)]
        self._next += 1
        return str(address)

    def announce(self, address: str, health: str, image: str) -> None:
        """Tell the pod server that a new pod with ``image`` answers on ``address``."""
        assert self.server is not None
        assert self.server.stdin is not None
        self.server.stdin.write(f"pod {address} {health} {image}\n")
        self.server.stdin.flush()

    def close(self) -> None:
        if self.server is not None:
            if self.server.stdin is not None:
                self.server.stdin.close()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=10)
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
