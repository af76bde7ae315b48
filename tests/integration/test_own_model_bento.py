"""A Bento of a model other than churn serves its own model with no ``DRIFTLOOP_MODEL_SPEC``.

A second spec (``loans``) is written to a temporary YAML, a model of it is trained on synthetic
data and saved, and its Bento built: it must be named after the model. The YAML is then rewritten
with other features, and the Bento served by a plain ``bentoml serve <tag>`` whose environment names
no spec: the request schema, the service's name and the documented API are the saved model's own.

The loans spec is a user's own in two more ways: its target is spelt "Yes"/"No" (in the training
data and in feedback), and two of its features are nullable (a request may send null or leave them
out; the training rows have gaps in them), for a logistic regression, which has to impute them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.integration.test_service import bento_server, query, stored
from training.spec import ModelSpec, load_spec

pytestmark = pytest.mark.integration

LOANS: dict[str, Any] = {
    "name": "loans",
    "description": "Probability that a loan defaults.",
    "target": "defaulted",
    "positive_label": "Yes",
    "negative_label": "No",
    "features": [
        {"name": "income", "type": "numeric", "min": 0, "max": 500000},
        {"name": "loan_amount", "type": "numeric", "min": 0, "max": 100000},
        {"name": "credit_score", "type": "numeric", "min": 300, "max": 850, "nullable": True},
        {"name": "purpose", "type": "categorical", "categories": ["car", "home", "education"]},
        {
            "name": "employment",
            "type": "categorical",
            "categories": ["salaried", "self", "none"],
            "nullable": True,
        },
    ],
    # A logistic regression, the family that cannot take a NaN: the nullable fields are imputed.
    "model": {"family": "logistic_regression", "params": {"C": 0.5}},
}
# What the YAML says once the Bento is built: a served Bento that read it would refuse the loans
# request (and accept this one).
REWRITTEN: dict[str, Any] = LOANS | {
    "features": [{"name": "something_else", "type": "numeric", "min": 0, "max": 1}]
}
NULLABLE = ("credit_score", "employment")


def _loans_frame(rows: int, seed: int) -> pd.DataFrame:
    """Loans whose default depends on the credit score, the loan-to-income ratio and employment;
    the target spelt Yes/No, and some credit scores and employments unknown."""
    rng = np.random.default_rng(seed)
    income = rng.uniform(10000, 200000, rows)
    loan_amount = rng.uniform(1000, 80000, rows)
    credit_score = rng.uniform(300, 850, rows)
    purpose = rng.choice(["car", "home", "education"], rows)
    employment = rng.choice(["salaried", "self", "none"], rows, p=[0.6, 0.3, 0.1])
    logit = (
        -(credit_score - 575) / 60
        + 3 * (loan_amount / income - 0.4)
        + np.where(employment == "none", 1.5, 0.0)
    )
    defaulted = rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "income": income,
            "loan_amount": loan_amount,
            "credit_score": np.where(rng.uniform(size=rows) < 0.1, np.nan, credit_score),
            "purpose": purpose,
            "employment": np.where(rng.uniform(size=rows) < 0.05, None, employment),
            "defaulted": np.where(defaulted, "Yes", "No"),
        }
    )


@dataclass(frozen=True)
class Loans:
    spec: ModelSpec
    spec_path: Path
    model_tag: str
    bento_tag: str


@pytest.fixture(scope="module")
def loans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loans]:
    """The loans model, trained as someone bringing their own would (driftloop pointed at their
    spec), saved, and its Bento built."""
    from training.bento import build_bento
    from training.registry import save_model
    from training.train import fit

    spec_path = tmp_path_factory.mktemp("loans-spec") / "loans.yaml"
    spec_path.write_text(yaml.safe_dump(LOANS, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLOOP_MODEL_SPEC", str(spec_path))
        spec = load_spec(spec_path)
        pipeline = fit(spec, _loans_frame(2000, seed=11))
        model_tag = save_model(spec, pipeline, metrics={}, train_data_uri="memory://loans")
        yield Loans(spec, spec_path, model_tag, build_bento(model_tag))


def _store(server_url: str) -> str:
    from training.postgres import create_database, with_database

    name = f"driftloop_loans_{uuid.uuid4().hex[:8]}"
    create_database(server_url, name)
    return with_database(server_url, name)


def _requests(spec: ModelSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The example, the example with nulls, and the example without its nullable fields."""
    full = spec.example_request()
    with_nulls = full | dict.fromkeys(NULLABLE)
    omitted = {k: v for k, v in full.items() if k not in NULLABLE}
    return full, with_nulls, omitted


def test_a_bento_of_another_model_is_named_after_it_and_serves_its_own_spec(
    loans: Loans, server_url: str, tmp_path: Path
) -> None:
    from training.evaluate import score
    from training.registry import load_model

    spec, version = loans.spec, loans.model_tag.partition(":")[2]
    assert loans.bento_tag == f"loans_service:{version}"
    import bentoml

    source = Path(bentoml.get(loans.bento_tag).path) / "src"
    assert (source / "bentos" / "service.py").is_file()
    assert not (source / "training" / "specs").exists(), "the Bento should ship no spec files"

    loans.spec_path.write_text(yaml.safe_dump(REWRITTEN, sort_keys=False))
    url = _store(server_url)
    home = tmp_path / "home"
    home.mkdir()
    env = os.environ | {"DRIFTLOOP_HOME": str(home), "DRIFTLOOP_DATABASE_URL": url}
    env.pop("DRIFTLOOP_MODEL_SPEC", None)
    env.pop("DRIFTLOOP_ARTIFACTS_URI", None)
    full, with_nulls, omitted = _requests(spec)
    with bento_server(loans.bento_tag, home, env, home / "serve.log") as (base, _):

        def post(route: str, body: Any) -> httpx.Response:
            return httpx.post(f"{base}{route}", json=body, timeout=30)

        answer = post("/predict", full)
        churn = post("/predict", load_spec().example_request())
        docs = httpx.get(f"{base}/docs.json", timeout=30)
        nulls = post("/predict", with_nulls)
        absent = post("/predict", omitted)
        batch = post("/predict_batch", {"records": [with_nulls, omitted]})
        required = post("/predict", {k: v for k, v in full.items() if k != "income"})
        ids = [r.json()["request_id"] for r in (nulls, absent)] + [
            p["request_id"] for p in batch.json()
        ]
        yes = post("/feedback", {"request_id": ids[0], "label": "Yes"})
        others = post(
            "/feedback_batch",
            {
                "labels": [
                    {"request_id": ids[1], "label": " no"},
                    {"request_id": ids[2], "label": 1},
                    {"request_id": ids[3], "label": False},
                ]
            },
        )
        unknown = post("/feedback", {"request_id": ids[0], "label": "maybe"})

    assert answer.status_code == 200, answer.text
    prediction = answer.json()
    assert prediction["model_name"] == "loans"
    assert prediction["model_version"] == version
    row = stored(url, [prediction["request_id"]])[prediction["request_id"]]
    assert row[0] == full

    assert churn.status_code == 400, churn.text
    refused = [".".join(str(p) for p in err["loc"]) for err in churn.json()["detail"]]
    assert "tenure_months" in refused, churn.text

    assert docs.status_code == 200, docs.text
    schemas = docs.json()["components"]["schemas"]
    documented = {field for schema in schemas.values() for field in schema.get("properties", {})}
    assert set(spec.feature_names) <= documented, sorted(documented)
    assert "something_else" not in documented
    assert {"type": "null"} in schemas["LoansRequest"]["properties"]["credit_score"]["anyOf"]
    label = schemas["FeedbackRequest"]["properties"]["label"]
    assert [t["type"] for t in label["anyOf"]] == ["boolean", "integer", "string"]
    assert "'Yes' (positive)" in label["description"]

    # Nullable fields sent as null or left out: scored as the pipeline scores a missing value,
    # and logged as null; a required field left out is still refused, naming it.
    pipeline, _ = load_model(loans.model_tag)
    expected = score(
        pipeline, spec, pd.DataFrame([with_nulls, omitted], columns=spec.feature_names)
    )
    for response in (nulls, absent, batch):
        assert response.status_code == 200, response.text
    served = [nulls.json()["score"], absent.json()["score"]] + [p["score"] for p in batch.json()]
    assert served == pytest.approx([*expected, *expected], abs=1e-12)
    assert served[0] != answer.json()["score"]
    rows = stored(url, ids)
    assert [rows[i][0] for i in ids] == [with_nulls] * 4
    assert required.status_code == 400, required.text
    assert ["income"] in [err["loc"] for err in required.json()["detail"]]

    # Feedback in the data's own words ("Yes", " no"), or 1/0, or a boolean: stored as 0/1 with
    # the value as sent beside it; an unknown label is a 400 naming the field and what it takes.
    assert yes.json() == {"request_id": ids[0], "label": 1, "status": "created"}
    assert others.status_code == 200, others.text
    assert [(r["label"], r["status"]) for r in others.json()] == [
        (0, "created"),
        (1, "created"),
        (0, "created"),
    ]
    feedback = query(
        url, "SELECT request_id, label, raw_label FROM feedback WHERE request_id = ANY(%s)", (ids,)
    )
    assert sorted(feedback) == sorted(
        zip(ids, [1, 0, 1, 0], ["Yes", " no", "1", "false"], strict=True)
    )
    assert unknown.status_code == 400, unknown.text
    (error,) = unknown.json()["detail"]
    assert error["loc"] == ["label"]
    assert "'Yes' (positive)" in error["msg"]
    assert "'No' (negative)" in error["msg"]


def test_the_services_own_api_methods_take_null_and_omitted_fields(
    loans: Loans, server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served, the prediction routes are answered by bentos.hotpath; the service's own API methods
    (what BentoML's app and in-process callers reach) score nullable fields sent as null or left
    out, log them as null, and still refuse a record lacking a required one."""
    import asyncio

    import bentoml

    # The project's own `bentos` package, so that the Bento's copy of it is not imported instead.
    import bentos  # noqa: F401

    url = _store(server_url)
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("DRIFTLOOP_DATABASE_URL", url)
    monkeypatch.delenv("DRIFTLOOP_MODEL_SPEC", raising=False)
    monkeypatch.delenv("DRIFTLOOP_ARTIFACTS_URI", raising=False)
    svc = bentoml.load(loans.bento_tag, reload=True)
    request = svc.apis["predict"].input_spec
    _, with_nulls, omitted = _requests(loans.spec)
    service = svc()  # the class called in-process, as BentoML's first test tier does
    try:

        async def calls() -> tuple[Any, Any, Any]:
            single = await service.predict(**omitted)
            required = await service.predict(**{k: v for k, v in omitted.items() if k != "income"})
            batch = await service.predict_batch([request(**with_nulls), request(**omitted)])
            return single, required, batch

        single, required, batch = asyncio.run(calls())
    finally:
        service.close()

    ids = [single.request_id] + [p.request_id for p in batch]
    rows = stored(url, ids)
    assert [rows[i][0] for i in ids] == [with_nulls] * 3
    assert len({rows[i][1] for i in ids}) == 1  # one score for one record, however it came
    assert required.status_code == 400
    assert b"lacks feature 'income'" in required.body
