"""The Bento service served for real: ``bentoml serve`` of the champion's Bento, called over HTTP.

One champion is bootstrapped for the module (trained on synthetic data, its Bento built, promoted
in a database of its own on the session's PostgreSQL), then served in a subprocess. Every test
checks both the HTTP answer and the rows it left (or did not leave) in PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import httpx
import psutil
import pytest

from training.spec import load_spec

pytestmark = pytest.mark.integration

EXAMPLE: dict[str, Any] = load_spec().example_request()
READY_TIMEOUT_S = 180.0  # a 2-core machine shared with other test runs: generous, never asserted
STOP_TIMEOUT_S = 30.0
# "... (status=500,type=..." in BentoML's access log
SERVER_ERROR = re.compile(r"\(status=5\d\d\b")


@dataclass(frozen=True)
class Champion:
    """A bootstrapped champion and where its records live."""

    database_url: str
    home: Path
    model_tag: str
    bento_tag: str

    @property
    def version(self) -> str:
        return self.model_tag.partition(":")[2]


@contextmanager
def champion_environment(server_url: str, home: Path) -> Iterator[Champion]:
    """Point driftloop at a fresh database on ``server_url`` and at ``home`` for the block, and
    bootstrap a champion there (trained, its Bento built with ``bentoml build``, promoted).

    The variables are set in ``os.environ`` so that subprocesses (the Bento build, ``bentoml
    serve``) and in-process services read the same settings.
    """
    from training.champion import bootstrap_champion
    from training.postgres import create_database, with_database
    from training.settings import get_settings
    from training.synthetic import generate

    name = f"driftloop_service_{uuid.uuid4().hex[:8]}"
    create_database(server_url, name)
    url = with_database(server_url, name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLOOP_HOME", str(home))
        mp.setenv("DRIFTLOOP_DATABASE_URL", url)
        mp.delenv("DRIFTLOOP_ARTIFACTS_URI", raising=False)
        mp.delenv("DRIFTLOOP_MODEL_SPEC", raising=False)
        promoted = bootstrap_champion(get_settings(), generate(3000, seed=1))
        yield Champion(
            database_url=url,
            home=home,
            model_tag=promoted["champion_tag"],
            bento_tag=promoted["bento_tag"],
        )


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one query on the store (a connection of its own, closed after)."""
    from training.store import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def count(url: str, table: str) -> int:
    return int(query(url, f"SELECT count(*) FROM {table}")[0][0])


def stored(url: str, request_ids: list[str], timeout_s: float = 60.0) -> dict[str, tuple[Any, ...]]:
    """The stored predictions of ``request_ids`` (features, score, label, model_version), waiting
    until all of them are there: the service answers first and its log writer stores right after.

    Fails naming how many are missing when they do not all arrive within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        rows = query(
            url,
            "SELECT request_id, features, score, label, model_version FROM predictions"
            " WHERE request_id = ANY(%s)",
            (request_ids,),
        )
        found = {row[0]: row[1:] for row in rows}
        if len(found) == len(set(request_ids)) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    missing = set(request_ids) - set(found)
    assert not missing, f"{len(missing)} of {len(set(request_ids))} predictions never stored"
    return found


def settled(url: str, quiet_s: float = 0.5, timeout_s: float = 60.0) -> int:
    """The number of stored predictions once it stops changing (the log writer has caught up)."""
    deadline = time.monotonic() + timeout_s
    last = count(url, "predictions")
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = count(url, "predictions")
        if now == last:
            return now
        last = now
    raise AssertionError("predictions kept arriving")


@dataclass(frozen=True)
class Served:
    """A running ``bentoml serve`` of the champion's Bento."""

    champion: Champion
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def post(self, route: str, body: str) -> httpx.Response:
        """POST a raw JSON text (so that NaN, Infinity and broken JSON reach the server as written)."""
        return httpx.post(
            f"{self.url}{route}",
            content=body.encode(),
            headers={"content-type": "application/json"},
            timeout=30,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"bentoml serve exited with {process.returncode} before it was ready:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(
        f"bentoml serve not ready within {READY_TIMEOUT_S:.0f} s:\n"
        f"{log.read_text(errors='replace')[-3000:]}"
    )


def server_processes(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The server and its live descendants (BentoML's supervisor, circusd, and its workers).

    They run in sessions of their own, so killing the server's process group does not reach
    them, and once the server is gone they are nobody's children: take them while it lives.
    """
    try:
        leader = psutil.Process(process.pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_server(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and all its processes at once, as a crash or the OOM killer would."""
    victims = server_processes(process)
    for victim in victims:
        with suppress(psutil.Error):
            victim.kill()
    psutil.wait_procs(victims, timeout=STOP_TIMEOUT_S)
    process.wait(timeout=STOP_TIMEOUT_S)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server: SIGTERM to it (BentoML stops its workers, which write their spools), then
    SIGKILL to whatever of its process tree is still alive."""
    tree = server_processes(process)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)
    for straggler in tree:
        with suppress(psutil.Error):
            straggler.kill()
    psutil.wait_procs(tree, timeout=STOP_TIMEOUT_S)
    process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def bento_server(
    bento_tag: str, home: Path, env: Mapping[str, str], log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``bentoml serve <bento_tag>`` on a free port of 127.0.0.1, in a session of its own, with
    ``env`` and ``home`` as its working dir, its output appended to ``log``; yields its URL and
    process once ``/readyz`` answers, and stops it and its workers after."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", "127.0.0.1"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=home,
            start_new_session=True,
        )
    try:
        _wait_ready(url, process, log)
        yield url, process
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def served(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The champion's Bento served on a free port of 127.0.0.1 for the whole module."""
    home = tmp_path_factory.mktemp("service-home")
    with champion_environment(server_url, home) as champion:
        log = home / "serve.log"
        with bento_server(champion.bento_tag, home, os.environ, log) as (url, process):
            yield Served(champion=champion, url=url, log=log, process=process)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[bentoml.SyncHTTPClient]:
    with bentoml.SyncHTTPClient(served.url, timeout=60) as c:
        yield c


def _raw(overrides: dict[str, str], drop: tuple[str, ...] = ()) -> str:
    """The example request as JSON text with some values replaced by raw JSON tokens."""
    body = {k: v for k, v in EXAMPLE.items() if k not in drop}
    body |= {k: f"@@{k}@@" for k in overrides}
    text = json.dumps(body)
    for key, token in overrides.items():
        text = text.replace(f'"@@{key}@@"', token)
    return text


def _error_fields(response: httpx.Response) -> list[str]:
    """The fields named by a 4xx body of BentoML's validation errors."""
    body = response.json()
    assert isinstance(body, dict), f"error body should be a JSON object, got {body!r}"
    assert body.get("error"), body
    return [".".join(str(p) for p in err["loc"]) for err in body.get("detail", [])]


def test_predict_scores_the_example_and_stores_it(
    served: Served, client: bentoml.SyncHTTPClient
) -> None:
    """The spec's example gets a score in [0, 1], the label the 0.5 threshold gives it, a request
    id and the champion's version; the prediction is stored with exactly the features sent, and the
    score is the one the champion's pipeline gives in-process."""
    import pandas as pd

    from training.evaluate import score
    from training.registry import load_model

    result = client.predict(**EXAMPLE)

    assert 0.0 <= result["score"] <= 1.0
    assert result["label"] == int(result["score"] >= 0.5)
    assert re.fullmatch(r"[0-9a-f]{32}", result["request_id"])
    assert result["model_name"] == "churn"
    assert result["model_version"] == served.champion.version
    pipeline, spec = load_model(served.champion.model_tag)
    assert result["score"] == pytest.approx(
        float(score(pipeline, spec, pd.DataFrame([EXAMPLE]))[0])
    )

    rows = stored(served.champion.database_url, [result["request_id"]])
    assert rows[result["request_id"]] == (
        EXAMPLE,
        pytest.approx(result["score"]),
        result["label"],
        served.champion.version,
    )
    champion_rows = query(
        served.champion.database_url,
        "SELECT tag FROM model_versions WHERE model_name = 'churn' AND status = 'champion'",
    )
    assert champion_rows == [(f"churn:{result['model_version']}",)]


def test_feedback_is_stored_once_and_the_latest_different_label_wins(
    served: Served, client: bentoml.SyncHTTPClient
) -> None:
    """Feedback for a served prediction is stored ("created"); the same label again changes nothing
    ("unchanged", still one row); a different label replaces it ("updated", revisions counted)."""
    request_id = client.predict(**EXAMPLE)["request_id"]
    url = served.champion.database_url
    stored = "SELECT label, revisions FROM feedback WHERE request_id = %s"

    first = client.feedback(request_id=request_id, label=1)
    assert first == {"request_id": request_id, "label": 1, "status": "created"}
    assert query(url, stored, (request_id,)) == [(1, 0)]

    again = client.feedback(request_id=request_id, label=1)
    assert again["status"] == "unchanged"
    assert query(url, stored, (request_id,)) == [(1, 0)]

    corrected = client.feedback(request_id=request_id, label=0)
    assert corrected == {"request_id": request_id, "label": 0, "status": "updated"}
    assert query(url, stored, (request_id,)) == [(0, 1)]


def test_feedback_takes_the_label_as_1_0_text_or_boolean_and_keeps_it_as_sent(
    served: Served, client: bentoml.SyncHTTPClient
) -> None:
    """The churn spec's labels are 1/0: "1", 0, true and false are the same labels, stored as 0/1
    with the value as sent in raw_label; the receipt gives the 0/1. An unknown label is a 400
    naming the field and what it accepts, before the request id is looked up."""
    request_id = client.predict(**EXAMPLE)["request_id"]
    url = served.champion.database_url
    stored = "SELECT label, raw_label, revisions FROM feedback WHERE request_id = %s"

    text = served.post("/feedback", json.dumps({"request_id": request_id, "label": "1"}))
    assert text.json() == {"request_id": request_id, "label": 1, "status": "created"}
    assert query(url, stored, (request_id,)) == [(1, "1", 0)]
    same = client.feedback(request_id=request_id, label=True)
    assert same == {"request_id": request_id, "label": 1, "status": "unchanged"}
    assert query(url, stored, (request_id,)) == [(1, "1", 0)]
    boolean = client.feedback(request_id=request_id, label=False)
    assert boolean == {"request_id": request_id, "label": 0, "status": "updated"}
    assert query(url, stored, (request_id,)) == [(0, "false", 1)]

    before = count(url, "feedback")
    unknown = served.post("/feedback", json.dumps({"request_id": "ghost", "label": "Yes"}))
    assert unknown.status_code == 400, unknown.text
    (error,) = unknown.json()["detail"]
    assert error["loc"] == ["label"]
    assert "neither 1 (positive) nor 0 (negative)" in error["msg"]
    batch = served.post(
        "/feedback_batch",
        json.dumps({"labels": [{"request_id": request_id, "label": 1}, {"request_id": "x"}]}),
    )
    assert batch.status_code == 400, batch.text
    assert ["labels", 1, "label"] in [err["loc"] for err in batch.json()["detail"]]
    assert count(url, "feedback") == before


def test_feedback_for_an_unknown_request_is_a_404_object_and_nothing_is_stored(
    served: Served, client: bentoml.SyncHTTPClient
) -> None:
    """Feedback naming no stored prediction answers 404 with a JSON object whose message names the
    request id (not BentoML's one-element list); the client raises NotFound; no row appears."""
    url = served.champion.database_url
    before = count(url, "feedback")

    response = served.post("/feedback", json.dumps({"request_id": "no-such-request", "label": 1}))

    assert response.status_code == 404
    body = response.json()
    assert isinstance(body, dict), body
    assert body["error"] == "no prediction with request_id 'no-such-request'"
    assert body["request_id"] == "no-such-request"
    with pytest.raises(bentoml.exceptions.NotFound, match="no-such-request"):
        client.feedback(request_id="no-such-request", label=0)
    assert count(url, "feedback") == before
    assert query(url, "SELECT 1 FROM feedback WHERE request_id = 'no-such-request'") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param('{"tenure_months": 60.0, "age": ', None, id="malformed-json"),
        pytest.param("[1, 2]", None, id="not-an-object"),
        pytest.param(_raw({}, drop=("age",)), "age", id="missing-field"),
        pytest.param(_raw({"bogus": "1"}), "bogus", id="extra-field"),
        pytest.param(_raw({"tenure_months": '"abc"'}), "tenure_months", id="string-for-number"),
        pytest.param(_raw({"contract": "5"}), "contract", id="number-for-category"),
        pytest.param(_raw({"age": "true"}), "age", id="boolean-for-number"),
        pytest.param(_raw({"age": '"60"'}), "age", id="numeric-string-for-number"),
        pytest.param(_raw({"monthly_charges": "NaN"}), "monthly_charges", id="nan"),
        pytest.param(_raw({"usage_hours": "Infinity"}), "usage_hours", id="infinity"),
        pytest.param(_raw({"usage_hours": "-Infinity"}), "usage_hours", id="minus-infinity"),
        pytest.param(_raw({"support_calls": "1e400"}), "support_calls", id="overflow-1e400"),
        pytest.param(_raw({"age": "15"}), "age", id="below-spec-min"),
        pytest.param(_raw({"tenure_months": "240.5"}), "tenure_months", id="above-spec-max"),
        pytest.param(_raw({"monthly_charges": "-1"}), "monthly_charges", id="negative"),
        pytest.param(_raw({"region": '""'}), "region", id="empty-category"),
        pytest.param(_raw({"region": '"no\\u0000rth"'}), "region", id="nul-character"),
    ],
)
def test_predict_refuses_bad_input_with_a_4xx_naming_the_field(
    served: Served, body: str, field: str | None
) -> None:
    """A request the schema refuses answers 4xx (never 500) with a JSON object naming the field at
    fault (or the JSON error when there is no field), and no prediction is stored."""
    url = served.champion.database_url
    before = settled(url)

    response = served.post("/predict", body)

    assert 400 <= response.status_code < 500, response.text
    fields = _error_fields(response)
    if field is None:
        assert response.json()["detail"][0]["type"] in {"json_invalid", "model_type"}
    else:
        assert field in fields, response.text
    assert settled(url) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param('{"request_id": "x", ', None, id="malformed-json"),
        pytest.param('{"request_id": "x", "label": 2}', "label", id="label-2"),
        pytest.param('{"request_id": "x", "label": -1}', "label", id="label-minus-1"),
        pytest.param('{"request_id": "x", "label": "yes"}', "label", id="label-unknown-text"),
        pytest.param('{"request_id": "x", "label": "2"}', "label", id="label-string-2"),
        pytest.param('{"request_id": "x", "label": null}', "label", id="label-null"),
        pytest.param('{"request_id": "x", "label": [1]}', "label", id="label-list"),
        pytest.param('{"request_id": "x", "label": 0.5}', "label", id="label-float"),
        pytest.param('{"request_id": "x", "label": NaN}', "label", id="label-nan"),
        pytest.param('{"request_id": "x"}', "label", id="missing-label"),
        pytest.param('{"request_id": "", "label": 1}', "request_id", id="empty-request-id"),
        pytest.param('{"request_id": 7, "label": 1}', "request_id", id="numeric-request-id"),
        pytest.param(
            json.dumps({"request_id": "r" * 129, "label": 1}), "request_id", id="long-request-id"
        ),
        pytest.param(
            '{"request_id": "a\\u0000b", "label": 1}', "request_id", id="nul-in-request-id"
        ),
        pytest.param('{"request_id": "x", "label": 1, "note": "hi"}', "note", id="extra-field"),
    ],
)
def test_feedback_refuses_bad_input_with_a_4xx_naming_the_field(
    served: Served, body: str, field: str | None
) -> None:
    """Feedback the schema refuses answers 4xx (never 500, never 404: validation comes first) with
    a JSON object naming the field at fault, and no feedback is stored."""
    url = served.champion.database_url
    before = count(url, "feedback")

    response = served.post("/feedback", body)

    assert 400 <= response.status_code < 500, response.text
    assert response.status_code != 404, response.text
    fields = _error_fields(response)
    if field is None:
        assert response.json()["detail"][0]["type"] == "json_invalid"
    else:
        assert field in fields, response.text
    assert count(url, "feedback") == before


def test_concurrent_predictions_all_succeed_and_all_are_stored(served: Served) -> None:
    """50 different requests from 8 threads at once all answer 200 with distinct request ids, and
    every one of them is stored with its own features and score: nothing lost, nothing mixed up."""
    from training.synthetic import generate

    spec = load_spec()
    frame = generate(50, seed=2)[spec.feature_names]
    requests: list[dict[str, Any]] = [
        {str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")
    ]
    local = threading.local()
    clients: list[bentoml.SyncHTTPClient] = []

    def predict(features: dict[str, Any]) -> dict[str, Any]:
        # One client per thread: each worker holds its own connection, as separate callers would.
        if not hasattr(local, "client"):
            local.client = bentoml.SyncHTTPClient(served.url, timeout=120)
            clients.append(local.client)
        result: dict[str, Any] = local.client.predict(**features)
        return result

    url = served.champion.database_url
    before = settled(url)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(predict, requests))
    finally:
        for c in clients:
            c.close()

    ids = [r["request_id"] for r in results]
    assert len(set(ids)) == len(requests)
    rows = stored(url, ids)
    for sent, result in zip(requests, results, strict=True):
        features, score, _, _ = rows[result["request_id"]]
        assert features == sent
        assert score == pytest.approx(result["score"])
    assert settled(url) == before + len(requests)


def test_batch_endpoints_through_bentomls_client(
    served: Served, client: bentoml.SyncHTTPClient
) -> None:
    """BentoML's generated client calls /predict_batch (answers in order, one request id each, all
    stored) and /feedback_batch (a receipt per label, unknown ids reported, not failed)."""
    from training.synthetic import generate

    records = [
        {str(k): v for k, v in row.items()}
        for row in generate(5, seed=4)[load_spec().feature_names].to_dict(orient="records")
    ]

    answers = client.predict_batch(records=records)

    assert [a["model_version"] for a in answers] == [served.champion.version] * 5
    ids = [a["request_id"] for a in answers]
    rows = stored(served.champion.database_url, ids)
    assert [rows[i][0] for i in ids] == records
    receipts = client.feedback_batch(
        labels=[{"request_id": ids[0], "label": 1}, {"request_id": "ghost", "label": 0}]
    )
    assert [r["status"] for r in receipts] == ["created", "not_found"]


def test_server_log_shows_no_server_error(served: Served) -> None:
    """After everything above (run last), the server log has no 5xx line: every refusal was a 4xx.
    BentoML's access log covers its own routes (a last request's span id is awaited in it first,
    so earlier lines are all there); the prediction routes log their refusals themselves in the
    same ``(status=...)`` form, and a refusal of a bad prediction is there."""
    response = httpx.post(
        f"{served.url}/feedback", json={"request_id": "log-sentinel", "label": 1}, timeout=30
    )
    assert response.status_code == 404
    span = response.headers["x-bentoml-request-id"]
    deadline = time.monotonic() + 30
    while f"span={span}" not in served.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = served.log_text()
    assert f"span={span}" in text, text[-3000:]
    assert "POST /predict (status=400)" in text
    assert [line for line in text.splitlines() if SERVER_ERROR.search(line)] == []


# (name, scopes, its own rate per second or None)
KeySpec = tuple[str, list[str], float | None]


@contextmanager
def keyed_server(
    server_url: str, home: Path, keys: Sequence[KeySpec], **env: str
) -> Iterator[tuple[Champion, str, dict[str, str]]]:
    """A champion served by ``bentoml serve`` with ``DRIFTLOOP_AUTH=on`` (and ``env``), and a
    token per key created in its store; yields the champion, the server's URL and the tokens."""
    from training.keys import create_key
    from training.store import connect

    with champion_environment(server_url, home) as champion:
        with connect(champion.database_url) as conn:
            tokens = {name: create_key(conn, name, scopes, rate)[1] for name, scopes, rate in keys}
        server_env = {**os.environ, "DRIFTLOOP_AUTH": "on", **env}
        with bento_server(champion.bento_tag, home, server_env, home / "serve.log") as (url, _):
            yield champion, url, tokens
