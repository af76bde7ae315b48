"""The one place driftloop reads configuration from (environment prefix ``DRIFTLOOP_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Runtime configuration, validated when built, never at import.

    Attributes:
        home: data dir for the embedded PostgreSQL, local artifacts and Airflow's home.
        database_url: a PostgreSQL URL; when unset, the embedded server under ``home`` is used.
        airflow_database_url: Airflow's metadata database; by default the ``airflow`` database on
            the embedded server, or the driftloop database itself when ``database_url`` is set.
        artifacts_uri: where datasets, reports and training data go: a folder or ``s3://bucket/prefix``.
        s3_endpoint_url: endpoint override for S3-compatible stores (MinIO, moto, ...).
        models: the folder of model specs (``*.yaml``, one model each); ``./models`` if unset. When
            it holds none, the built-in churn spec is the one model.
        model_spec: one model spec YAML, used instead of the ``models`` folder (a single model).
        containerize: whether the retrain DAG builds an OCI image of the new Bento before promoting
            it (off by default: local runs rarely have a container engine).
        image_backend: ``bentoml containerize`` backend: docker, buildx, buildah or podman; ``auto``
            is docker where a Docker daemon answers, else buildah.
        image_base: base image of the built image: None for the Bento's own (BentoML's official
            ``python:3.11-slim``), ``local`` for one made here with debootstrap, or an image ref.
        image_extra_ca: a PEM file, or a folder of ``.crt``/``.pem`` files, that the build's steps
            trust (TLS-intercepting proxies); mounted during the build only, never in the image.
        image_repository: image name, e.g. ``ghcr.io/acme/churn_service``; the Bento's name if unset.
        debian_mirror: where ``debootstrap`` fetches the local base image's packages; by default the
            mirror this machine's apt uses, else ``http://deb.debian.org/debian``.
        log_predictions: whether the service records every prediction (off only to measure what
            logging costs: predictions that are not recorded can never get feedback).
        spool_dir: where each service worker writes predictions ahead of PostgreSQL; ``home/spool``
            if unset. In a container, mount a volume here: what is in it has not reached the store.
        spool_max_mb: the most each worker's spool may hold; past it, predictions get 503.
        log_flush_ms: how long the log writer lets records gather before one COPY.
        batch_max_size: overrides the Bento's adaptive-batching ``max_batch_size``.
        batch_max_latency_ms: overrides the Bento's adaptive-batching ``max_latency_ms``.
        batch_max_records: the most records one ``/predict_batch`` request may carry.
        db_connect_timeout_s: connect timeout of the service's database connections.
        db_statement_timeout_ms: statement timeout of the service's database connections.
        auth: ``on``: the service's API routes need an API key (``driftloop keys``); ``off`` (the
            default, for the local demo): anyone who reaches the port may predict and post labels.
        auth_cache_s: how long each worker caches a key; a revoked key is refused within this.
        auth_stale_s: while the store cannot be reached, a key a worker checked within this many
            seconds keeps its last answer (so predictions go on to the spool); 0: refuse with 503.
        rate_limit: requests per second a key may send to each worker, unless it has its own rate.
        rate_burst: requests a key may send at once (the bucket's size) at the default rate.
        auth_fail_rate: requests per second each client address may send without a valid key
            (missing, unknown, wrong or revoked) to each worker; past it, 429 before any lookup.
        auth_fail_burst: such requests an address may send at once.
        grpc_port: the port every service worker serves the gRPC API on (``0``: no gRPC).
        grpc_host: the address it listens on; by default the one the HTTP server listens on.
        serve_follow_poll_s: how often ``driftloop serve`` reads the registry for a new champion,
            whose Bento it then starts beside the running one and switches to once it is ready.
        serve_ready_timeout_s: how long a Bento ``driftloop serve`` starts may take to answer
            ``/readyz``; past it, it is stopped and the one running keeps serving.
        kubeconfig: the kubeconfig ``driftloop rollout`` uses; else ``KUBECONFIG``, ``~/.kube/config``
            or, inside a pod, its service account.
        k8s_context: a context of that kubeconfig; its current context if unset.
        k8s_namespace: the namespace of the stable Deployment.
        k8s_deployment: the stable Deployment a rollout updates (its canary is ``<name>-canary``).
        k8s_container: the container that runs the Bento's image; the pod's first if unset.
        rollout: ``on``: the retrain DAG rolls a new champion out to the cluster after promoting it.
        rollout_canary_share: the canary's replicas as a share of the stable's (at least one).
        rollout_progress_deadline_s: how long the canary's pods (and then the stable's) may take
            to become ready; past it, the rollout is rolled back.
        rollout_bake_s: how long the ready canary must stay healthy before it is promoted.
        rollout_max_restarts: container restarts the canary may have before it is rolled back.
        rollout_poll_s: how often the canary's health is read.
        rollout_max_error_rate: the share of the canary's requests over the bake that may be
            answered with server errors (HTTP 5xx, gRPC INTERNAL/UNAVAILABLE/...), counted from
            its pods' ``/metrics`` through the API server; ``1`` turns the check off.
        rollout_min_requests: fewer requests than this over the bake are too few to judge the
            canary's error rate by (the bake then passes on readiness and restarts alone).
        rollout_metrics_key: an ``admin`` API key for reading the canary's ``/metrics`` when it
            serves with ``DRIFTLOOP_AUTH=on``.
        retrain_retries: how many times the retrain DAG retries a failed task (transient errors: the
            database or the artifact store away for a moment); 0 fails at the first error.
        retrain_retry_delay_s: the wait before the first retry; each next one waits twice as long.
        retrain_retry_max_delay_s: the longest wait between two tries.
        retrain_timeout_hours: a retrain run still going after this long is failed (Airflow's
            ``dagrun_timeout``), and a training run left open this long by a crash is closed.
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.cwd() / ".driftloop")
    database_url: str | None = None
    airflow_database_url: str | None = None
    artifacts_uri: str | None = None
    s3_endpoint_url: str | None = None
    models: Path = Field(default_factory=lambda: Path.cwd() / "models")
    model_spec: Path | None = None
    containerize: bool = False
    image_backend: Literal["docker", "buildx", "buildah", "podman", "auto"] = "docker"
    image_base: str | None = None
    image_extra_ca: Path | None = None
    image_repository: str | None = None
    debian_mirror: str | None = None
    log_predictions: bool = True
    spool_dir: Path | None = None
    spool_max_mb: int = Field(512, ge=1)
    log_flush_ms: int = Field(50, ge=1, le=60_000)
    batch_max_size: int | None = Field(None, ge=1, le=10_000)
    batch_max_latency_ms: int | None = Field(None, ge=1)
    batch_max_records: int = Field(1000, ge=1, le=100_000)
    db_connect_timeout_s: int = Field(3, ge=1, le=300)
    db_statement_timeout_ms: int = Field(5000, ge=1)
    auth: Literal["on", "off"] = "off"
    auth_cache_s: float = Field(10.0, ge=0, le=3600)
    auth_stale_s: float = Field(3600.0, ge=0)
    rate_limit: float = Field(50.0, gt=0)
    rate_burst: int = Field(100, ge=1)
    auth_fail_rate: float = Field(1.0, gt=0)
    auth_fail_burst: int = Field(20, ge=1)
    grpc_port: int = Field(3001, ge=0, le=65535)
    grpc_host: str | None = None
    serve_follow_poll_s: float = Field(5.0, gt=0)
    serve_ready_timeout_s: float = Field(300.0, gt=0)
    kubeconfig: Path | None = None
    k8s_context: str | None = None
    k8s_namespace: str = "default"
    k8s_deployment: str = "driftloop"
    k8s_container: str | None = None
    rollout: Literal["on", "off"] = "off"
    rollout_canary_share: float = Field(0.1, gt=0, le=1)
    rollout_progress_deadline_s: float = Field(600.0, gt=0)
    rollout_bake_s: float = Field(300.0, ge=0)
    rollout_max_restarts: int = Field(0, ge=0)
    rollout_poll_s: float = Field(2.0, gt=0)
    rollout_max_error_rate: float = Field(0.05, ge=0, le=1)
    rollout_min_requests: int = Field(20, ge=1)
    rollout_metrics_key: SecretStr | None = None
    retrain_retries: int = Field(2, ge=0, le=20)
    retrain_retry_delay_s: float = Field(60.0, ge=0)
    retrain_retry_max_delay_s: float = Field(1800.0, ge=0)
    retrain_timeout_hours: float = Field(6.0, gt=0)

    @field_validator("home", "models")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Services and Airflow tasks run with other working dirs; a relative home would split the data.
        return value.expanduser().resolve()

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def artifacts_root(self) -> str:
        return self.artifacts_uri or str(self.home / "artifacts")

    @property
    def spool_root(self) -> Path:
        return (self.spool_dir or self.home / "spool").expanduser().resolve()

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"


def get_settings() -> Settings:
    """Build the settings from the environment (call at the edge, not at import)."""
    return Settings()
