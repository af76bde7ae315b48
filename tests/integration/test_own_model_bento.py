"""A Bento of a model other than churn serves its own model with no ``DRIFTLOOP_MODEL_SPEC``.

A second spec (``loans``) is written to a temporary YAML, a model of it is trained on synthetic
data and saved, and its Bento built: it must be named after the model. The YAML is then rewritten
with other features, and the Bento served by a plain ``bentoml serve <tag>`` whose environment names
no spec: the request schema, the service's name and the documented API are the saved model's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.integration.test_service import _free_port, _stop, _wait_ready, stored
from training.spec import load_spec

pytestmark = pytest.mark.integration

LOANS: dict[str, Any] = {
    "name": "loans",
    "description": "Probability that a loan defaults.",
    "target": "defaulted",
    "features": [
        {"name": "income", "type": "numeric", "min": 0, "max": 500000},
        {"name": "loan_amount", "type": "numeric", "min": 0, "max": 100000},
        {"name": "credit_score", "type": "numeric", "min": 300, "max": 850},
        {"name": "purpose", "type": "categorical", "categories": ["car", "home", "education"]},
        {"name": "employment", "type": "categorical", "categories": ["salaried", "self", "none"]},
    ],
    "model": {
        "family": "lightgbm",
        "params": {
            "n_estimators": 30,
            "num_leaves": 7,
            "learning_rate": 0.1,
            "random_state": 3,
            "verbose": -1,
            "n_jobs": 1,
        },
    },
}
# What the YAML says once the Bento is built: a served Bento that read it would refuse the loans
# request (and accept this one).
REWRITTEN: dict[str, Any] = LOANS | {
    "features": [{"name": "something_else", "type": "numeric", "min": 0, "max": 1}]
}


def _loans_frame(rows: int, seed: int) -> pd.DataFrame:
    """Loans whose default depends on the credit score, the loan-to-income ratio and employment."""
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
    defaulted = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    return pd.DataFrame(
        {
            "income": income,
            "loan_amount": loan_amount,
            "credit_score": credit_score,
            "purpose": purpose,
            "employment": employment,
            "defaulted": defaulted,
        }
    )


def test_a_bento_of_another_model_is_named_after_it_and_serves_its_own_spec(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.bento import build_bento
    from training.postgres import create_database, with_database
    from training.registry import save_model
    from training.train import fit

    spec_path = tmp_path / "loans.yaml"
    spec_path.write_text(yaml.safe_dump(LOANS, sort_keys=False))
    # As someone bringing their own model trains it: driftloop pointed at their spec.
    monkeypatch.setenv("DRIFTLOOP_MODEL_SPEC", str(spec_path))
    spec = load_spec(spec_path)
    pipeline = fit(spec, _loans_frame(2000, seed=11))
    model_tag = save_model(spec, pipeline, metrics={}, train_data_uri="memory://loans")
    version = model_tag.partition(":")[2]

    bento_tag = build_bento(model_tag)

    assert bento_tag == f"loans_service:{version}"
    import bentoml

    source = Path(bentoml.get(bento_tag).path) / "src"
    assert (source / "bentos" / "service.py").is_file()
    assert not (source / "training" / "specs").exists(), "the Bento should ship no spec files"

    spec_path.write_text(yaml.safe_dump(REWRITTEN, sort_keys=False))
    name = f"driftloop_loans_{uuid.uuid4().hex[:8]}"
    create_database(server_url, name)
    url = with_database(server_url, name)
    home = tmp_path / "home"
    home.mkdir()
    env = os.environ | {
        "PYTHONUNBUFFERED": "1",
        "DRIFTLOOP_HOME": str(home),
        "DRIFTLOOP_DATABASE_URL": url,
    }
    env.pop("DRIFTLOOP_MODEL_SPEC")
    env.pop("DRIFTLOOP_ARTIFACTS_URI", None)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                bento_tag,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=home,
            start_new_session=True,
        )
    try:
        _wait_ready(base, process, log)

        answer = httpx.post(f"{base}/predict", json=spec.example_request(), timeout=30)
        churn = httpx.post(f"{base}/predict", json=load_spec().example_request(), timeout=30)
        docs = httpx.get(f"{base}/docs.json", timeout=30)
    finally:
        _stop(process)

    assert answer.status_code == 200, answer.text
    prediction = answer.json()
    assert prediction["model_name"] == "loans"
    assert prediction["model_version"] == version
    row = stored(url, [prediction["request_id"]])[prediction["request_id"]]
    assert row[0] == spec.example_request()

    assert churn.status_code == 400, churn.text
    refused = [".".join(str(p) for p in err["loc"]) for err in churn.json()["detail"]]
    assert "tenure_months" in refused, churn.text

    assert docs.status_code == 200, docs.text
    schemas = docs.json()["components"]["schemas"]
    documented = {field for schema in schemas.values() for field in schema.get("properties", {})}
    assert set(spec.feature_names) <= documented, sorted(documented)
    assert "something_else" not in documented
