"""Releasing a Bento: its OCI image (``bentoml containerize``, with or without a Docker daemon) and
the smoke check that the image starts and serves.

``docker`` and ``buildx`` need a daemon (users' CI); ``buildah`` (and ``podman``) build without one,
which is how driftloop's own CI proves that every Bento becomes an image that starts and serves.

Three things make a daemonless build work on a bare Debian machine, and all three are opt-in so a
user's default stays BentoML's own (``python:3.11-slim`` base, ``docker`` backend):

- :func:`~training.release.engines.engine_env`: a ``containers.conf`` for buildah/podman (runc,
  cgroupfs, explicit ulimits), passed through ``CONTAINERS_CONF`` instead of editing ``/etc``;
- :func:`~training.release.base_image.ensure_local_base`: with no registry to pull from, a base image
  made here with ``debootstrap`` (Debian bookworm, Python 3.11, the host's ``uv``), kept in the
  engine's storage as a cache;
- ``extra_ca`` of :func:`~training.release.containerize.containerize`: CA certificates mounted into
  the build's steps only (a TLS-intercepting proxy), never copied into the image.

One module per concern: ``engines`` (which tool builds and runs images, and how), ``base_image``,
``containerize`` and ``smoke``.
"""

from __future__ import annotations

from training.release.base_image import LOCAL_BASE, ensure_local_base
from training.release.containerize import BuiltImage, containerize, record_image
from training.release.engines import BACKENDS, check_backend, engine_env, push, resolve_backend
from training.release.smoke import SmokeResult, smoke_test

__all__ = [
    "BACKENDS",
    "LOCAL_BASE",
    "BuiltImage",
    "SmokeResult",
    "check_backend",
    "containerize",
    "engine_env",
    "ensure_local_base",
    "push",
    "record_image",
    "resolve_backend",
    "smoke_test",
]
