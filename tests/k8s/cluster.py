"""A real Kubernetes control plane on loopback for the rollout tests.

etcd (Debian's ``etcd-server``), ``kube-apiserver`` and ``kube-controller-manager`` 1.20.2 (built
from Debian bookworm's source package by ``make k8s-test-tools``, cached per machine) run as child
processes; the API server serves only its secure port, with a static token file and a self-signed
certificate made here. There is no scheduler and no kubelet: :class:`tests.k8s.node_agent.NodeAgent`
registers a node, binds pods and reports their status in their place.

The controller manager runs the controllers a rollout relies on (Deployments, ReplicaSets,
Endpoints, garbage collection, namespaces); node lifecycle is off because the agent's node never
sends heartbeats, and the ServiceAccount admission plugin is off because no token controller runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

KUBE_VERSION = "1.20.2"
TOKEN = "driftloop-test-admin-token"


def kube_cache() -> Path:
    """Where ``make k8s-test-tools`` (deploy/k8s-test/build.sh) leaves the binaries."""
    default = Path.home() / ".cache" / "driftloop" / f"kube-{KUBE_VERSION}"
    return Path(os.environ.get("DRIFTLOOP_KUBE_CACHE", default))


def missing_tools() -> list[str]:
    cache = kube_cache()
    missing = [b for b in ("kube-apiserver", "kube-controller-manager") if not (cache / b).exists()]
    if shutil.which("etcd") is None:
        missing.append("etcd")
    if shutil.which("openssl") is None:
        missing.append("openssl")
    return missing


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Cluster:
    """A running control plane: its address, a kubeconfig file for it, and its processes."""

    server: str
    kubeconfig: Path
    workdir: Path
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )


def _start(name: str, argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it until it exits
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _certificate(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "apiserver.crt", workdir / "apiserver.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _kubeconfig(path: Path, server: str, cert: Path) -> None:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority: {cert}
users:
- name: admin
  user:
    token: {TOKEN}
contexts:
- name: test
  context:
    cluster: test
    user: admin
    namespace: default
current-context: test
"""
    )


def _wait_ready(cluster: Cluster, cert: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        for process in cluster.processes:
            if process.poll() is not None:
                name = Path(str(process.args[0])).name  # type: ignore[index]
                raise RuntimeError(f"{name} exited:\n{cluster.log_tail(name)}")
        try:
            response = httpx.get(
                f"{cluster.server}/readyz",
                headers={"Authorization": f"Bearer {TOKEN}"},
                verify=str(cert),
                timeout=2,
            )
            if response.status_code == 200:
                return
            last = response.text[-300:]
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RuntimeError(f"the API server was not ready in {deadline_s}s: {last}")


def start_cluster(workdir: Path) -> Cluster:
    """Start etcd, the API server and the controller manager under ``workdir``; return once the
    API server answers ``/readyz`` (raises with the failing process's log otherwise)."""
    cache = kube_cache()
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = _certificate(workdir)
    (workdir / "tokens.csv").write_text(f'{TOKEN},admin,admin-uid,"system:masters"\n')
    etcd_port, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    _kubeconfig(kubeconfig, server, cert)
    etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{etcd_peer}"
    processes = [
        _start(
            "etcd",
            [
                "etcd",
                "--data-dir",
                str(workdir / "etcd"),
                "--name",
                "default",
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"default={peer_url}",
                "--log-level",
                "warn",
            ],
            workdir,
        )
    ]
    cluster = Cluster(server, kubeconfig, workdir, processes)
    try:
        processes.append(
            _start(
                "kube-apiserver",
                [
                    str(cache / "kube-apiserver"),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    "--insecure-port=0",
                    # Nothing is ever sent to these: a Service needs a cluster-IP range and the
                    # API server an address to advertise (both in the documentation range).
                    "--advertise-address=192.0.2.1",
                    "--service-cluster-ip-range=192.0.2.128/25",
                    "--endpoint-reconciler-type=none",
                    f"--tls-cert-file={cert}",
                    f"--tls-private-key-file={key}",
                    f"--token-auth-file={workdir / 'tokens.csv'}",
                    "--authorization-mode=RBAC",
                    f"--service-account-key-file={key}",
                    f"--service-account-signing-key-file={key}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    "--disable-admission-plugins=ServiceAccount",
                    "--enable-priority-and-fairness=false",
                    f"--cert-dir={workdir / 'certs'}",
                ],
                workdir,
            )
        )
        _wait_ready(cluster, cert, deadline_s=60)
        processes.append(
            _start(
                "kube-controller-manager",
                [
                    str(cache / "kube-controller-manager"),
                    f"--kubeconfig={kubeconfig}",
                    "--leader-elect=false",
                    "--port=0",
                    "--secure-port=0",
                    "--controllers=deployment,replicaset,endpoint,garbagecollector,namespace",
                    "--use-service-account-credentials=false",
                ],
                workdir,
            )
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster
