"""Printed database URLs hide their password (training.redact.redact_url)."""

from __future__ import annotations

import pytest

from training.redact import redact_url


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        pytest.param(
            "postgresql://loop:s3cret@db.internal:5432/driftloop",
            "postgresql://loop:***@db.internal:5432/driftloop",
            id="user-and-password",
        ),
        pytest.param(
            "postgres://loop:p%40ss%3Aw0rd@db/driftloop?sslmode=require",
            "postgres://loop:***@db/driftloop?sslmode=require",
            id="percent-encoded-password-and-query-kept",
        ),
        pytest.param(
            "postgresql://loop:p@ss@db/driftloop",
            "postgresql://loop:***@db/driftloop",
            id="unencoded-at-in-password",
        ),
        pytest.param(
            "postgresql://loop:a:b:c@[::1]:5432/driftloop",
            "postgresql://loop:***@[::1]:5432/driftloop",
            id="colons-in-password-ipv6-host",
        ),
        pytest.param(
            "postgresql:///driftloop?host=/var/run/pg&user=loop&password=s3cret&sslmode=disable",
            "postgresql:///driftloop?host=/var/run/pg&user=loop&password=***&sslmode=disable",
            id="password-in-the-query",
        ),
        pytest.param(
            "postgresql://loop@db/driftloop?PASSWORD=s3cret",
            "postgresql://loop@db/driftloop?PASSWORD=***",
            id="query-key-any-case",
        ),
        pytest.param(
            "host=db user=loop password=s3cret dbname=driftloop",
            "host=db user=loop password=*** dbname=driftloop",
            id="keyword-value",
        ),
        pytest.param(
            "postgresql://loop@db/driftloop?sslkey=/k.pem&sslpassword=s3cret&sslmode=verify-full",
            "postgresql://loop@db/driftloop?sslkey=/k.pem&sslpassword=***&sslmode=verify-full",
            id="ssl-key-passphrase-in-the-query",
        ),
        pytest.param(
            "host=db sslkey=/k.pem sslpassword=s3cret dbname=driftloop",
            "host=db sslkey=/k.pem sslpassword=*** dbname=driftloop",
            id="ssl-key-passphrase-keyword-value",
        ),
        pytest.param(
            "host=db password = 's3cret \\' and\\\\ more' dbname=driftloop",
            "host=db password = *** dbname=driftloop",
            id="keyword-value-quoted-with-escapes",
        ),
    ],
)
def test_passwords_are_replaced_and_the_rest_kept(url: str, printed: str) -> None:
    assert redact_url(url) == printed
    assert "s3cret" not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://postgres:@/driftloop?host=/tmp/driftloop-pg-x1", id="embedded"),
        pytest.param("postgresql://loop@db:5432/driftloop", id="no-password"),
        pytest.param("postgresql:///driftloop?host=/var/run/postgresql", id="socket-only"),
        pytest.param("host=/var/run/postgresql dbname=driftloop", id="keyword-no-password"),
    ],
)
def test_urls_without_a_password_print_unchanged(url: str) -> None:
    assert redact_url(url) == url
