"""``driftloop promote``, ``rollback`` and ``models --model`` on a real store: who made each
champion and why, and where a rollback goes back to. Versions are registered directly (with a Bento
tag, not a built Bento: these commands only change the registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training import registry
from training.cli import main
from training.store import connect

pytestmark = pytest.mark.integration


def _versions(store_url: str, *tags: str) -> None:
    with connect(store_url) as conn:
        for tag in tags:
            registry.register(conn, model_name="churn", tag=tag, metrics={}, train_data_uri="x")
            registry.set_bento(conn, tag, f"churn_service:{tag.partition(':')[2]}")


def _status(store_url: str) -> dict[str, tuple[Any, ...]]:
    with connect(store_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tag, status, retired_at IS NOT NULL FROM model_versions")
        return {tag: (status, retired) for tag, status, retired in cur.fetchall()}


def test_rollback_walks_back_the_champions_and_everything_is_recorded(
    env: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _versions(store_url, "churn:a", "churn:b", "churn:c")
    with connect(store_url) as conn:
        for tag in ("churn:a", "churn:b", "churn:c"):  # three retrains in a row
            registry.promote(conn, tag, by="run r", reason="passed its gates")

    assert main(["rollback", "--reason", "c mislabels new customers"]) == 0
    assert "champion of churn: v2 (churn:b" in capsys.readouterr().out
    assert _status(store_url) == {
        "churn:a": ("retired", True),
        "churn:b": ("champion", False),
        "churn:c": ("retired", True),
    }
    # A second rollback goes further back, not back to c.
    assert main(["rollback", "--reason", "b too"]) == 0
    assert _status(store_url)["churn:a"] == ("champion", False)
    assert main(["rollback", "--reason", "again"]) == 1
    assert "churn:a replaced no earlier champion" in capsys.readouterr().err

    with connect(store_url) as conn:
        log = registry.promotions(conn, "churn")
    assert [(p.tag, p.previous_tag, p.action) for p in log[:2]] == [
        ("churn:a", "churn:b", "rollback"),
        ("churn:b", "churn:c", "rollback"),
    ]
    assert log[0].reason == "b too"
    assert log[0].by.endswith("(driftloop rollback)")


def test_promote_by_hand_and_what_it_refuses(
    env: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _versions(store_url, "churn:a", "churn:b")
    with connect(store_url) as conn:
        registry.promote(conn, "churn:a", by="run r", reason="first")
        registry.register(conn, model_name="churn", tag="churn:bad", metrics={}, train_data_uri="x")
        registry.reject(conn, "churn:bad")

    assert main(["promote", "churn:b", "--reason", "tested by hand"]) == 0
    assert _status(store_url)["churn:b"] == ("champion", False)
    for tag, problem in (
        ("churn:b", "already the champion"),
        ("churn:bad", "was rejected"),
        ("churn:nope", "not in the registry"),
        ("nocolon", "TAG must be <model>:<version tag>"),
    ):
        assert main(["promote", tag, "--reason", "x"]) == 1
        assert problem in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["promote", "churn:a"])  # --reason is required
    assert usage.value.code == 2
    assert "--reason" in capsys.readouterr().err

    assert main(["models", "--model", "churn"]) == 0
    out = capsys.readouterr().out
    assert "v2        champion" in out
    assert "promote  churn:b (replacing churn:a) by " in out
    assert ": tested by hand" in out
