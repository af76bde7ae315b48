"""bentos.grpc_port.warn_if_open: a server with auth off says so when it listens beyond loopback."""

from __future__ import annotations

import logging

import pytest

from bentos.grpc_port import warn_if_open
from training.settings import Settings


@pytest.mark.parametrize(
    ("auth", "host", "warned"),
    [
        ("off", "0.0.0.0", True),
        ("off", "::", True),
        ("off", "10.1.2.3", True),
        ("off", "127.0.0.1", False),
        ("off", "::1", False),
        ("off", "localhost", False),
        ("off", None, False),
        ("on", "0.0.0.0", False),
    ],
)
def test_auth_off_beyond_loopback_is_a_warning(
    auth: str, host: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(auth=auth)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="driftloop.serve"):
        assert warn_if_open(settings, host) is warned
    assert ("DRIFTLOOP_AUTH is off" in caplog.text) is warned
    if warned:
        assert str(host) in caplog.text
