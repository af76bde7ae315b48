"""``driftloop prune-models`` on a real store and a real BentoML store: what it keeps, what it
deletes (Bento, model, export), how each deletion is recorded, and that a pruned version cannot be
made champion again.

Six versions of churn, each a real model saved by ``registry.save_model`` and registered; the four
that were champion have a Bento exported to the artifact store with ``publish_bento``. Their Bentos
are a stand-in service built in this process with ``bentoml.bentos.build`` (seconds each, where the
loop's own Bento takes about a minute here): retention deletes Bentos by tag and never reads one.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from training import registry, runs
from training.bento import publish_bento
from training.cli import main
from training.model_retention import prune_models
from training.settings import get_settings
from training.spec import load_spec
from training.store import connect
from training.synthetic import generate
from training.train import fit

pytestmark = pytest.mark.integration

STAND_IN = """
import bentoml


@bentoml.service
class churn_service:
    @bentoml.api
    def ping(self) -> str:
        return "stand-in"
"""


def _stand_in_bento(folder: Path, version: str) -> str:
    import bentoml

    folder.mkdir(exist_ok=True)
    (folder / "retention_stand_in.py").write_text(textwrap.dedent(STAND_IN))
    bento = bentoml.bentos.build(
        "retention_stand_in:churn_service",
        include=["retention_stand_in.py"],
        version=version,
        build_ctx=str(folder),
    )
    return str(bento.tag)


@pytest.fixture
def six_versions(env: Path, tmp_path: Path) -> dict[int, registry.ModelVersion]:
    """v1..v4 champions in turn (v4 now), v5 rejected, v6 a candidate; v2's Bento served."""
    settings = get_settings()
    url = settings.database_url or ""
    spec = load_spec()
    pipeline = fit(spec, generate(300, seed=1))
    tags = []
    for i in range(1, 7):
        tag = registry.save_model(
            spec, pipeline, metrics={"roc_auc": 0.7}, train_data_uri=f"/nowhere/v{i}.parquet"
        )
        with connect(url) as conn:
            registry.register(conn, model_name="churn", tag=tag, metrics={}, train_data_uri="-")
        tags.append(tag)
    for tag in tags[:4]:
        bento_tag = _stand_in_bento(tmp_path / "stand-in", tag.partition(":")[2])
        with connect(url) as conn:
            registry.set_bento(conn, tag, bento_tag)
        publish_bento(settings, url, tag, bento_tag)
        with connect(url) as conn:
            registry.promote(conn, tag, reason="test")
    with connect(url) as conn:
        registry.reject(conn, tags[4])
        v2 = registry.get_version(conn, tags[1])
        runs.record_deployment(
            conn, v2.tag, v2.bento_tag or "", target="local", status="serving", detail={}
        )
        return {i: registry.get_version(conn, tag) for i, tag in enumerate(tags, start=1)}


def _stored(v: registry.ModelVersion) -> dict[str, bool]:
    import bentoml
    from bentoml.exceptions import NotFound

    def there(get: Any, tag: str | None) -> bool:
        try:
            get(tag)
        except NotFound:
            return False
        return True

    return {
        "model": there(bentoml.models.get, v.tag),
        "bento": v.bento_tag is not None and there(bentoml.bentos.get, v.bento_tag),
        "export": v.bento_uri is not None and Path(v.bento_uri).is_file(),
    }


def test_prune_keeps_the_champion_the_one_before_and_what_is_used_and_records_the_rest(
    six_versions: dict[int, registry.ModelVersion], capsys: pytest.CaptureFixture[str]
) -> None:
    v = six_versions
    assert [v[i].status for i in range(1, 7)] == [
        "retired",
        "retired",
        "retired",
        "champion",
        "rejected",
        "candidate",
    ]
    before = {i: _stored(v[i]) for i in v}
    assert before[1] == {"model": True, "bento": True, "export": True}

    # The dry run says what would go and why, and deletes nothing.
    assert main(["prune-models", "--keep", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"keep   v4    {v[4].tag}: the champion" in out
    assert (
        f"keep   v3    {v[3].tag}: champion before the current one (#1 of 1 kept); "
        "the version `driftloop rollback` goes back to" in out
    )
    assert f"keep   v2    {v[2].tag}: its Bento is deployed: target local (serving)" in out
    assert f"keep   v6    {v[6].tag}: a candidate: its run may still promote it" in out
    assert (
        f"prune  v1    {v[1].tag}: retired; champion #3 before the current one, 1 kept; would "
        f"delete Bento {v[1].bento_tag}, model {v[1].tag}, export {v[1].bento_uri}" in out
    )
    assert (
        f"prune  v5    {v[5].tag}: rejected; never champion; would delete model {v[5].tag}" in out
    )
    assert "would prune 2 versions (dry run: nothing deleted)" in out
    assert {i: _stored(v[i]) for i in v} == before
    url = get_settings().database_url or ""
    with connect(url) as conn:
        assert runs.deployments(conn, target="retention") == []

    pruned = prune_models(get_settings(), keep=1)

    assert [(p.version, p.removed) for p in pruned] == [
        (5, [f"model {v[5].tag}"]),
        (1, [f"Bento {v[1].bento_tag}", f"model {v[1].tag}", f"export {v[1].bento_uri}"]),
    ]
    after = {i: _stored(v[i]) for i in v}
    assert after[1] == {"model": False, "bento": False, "export": False}
    assert after[5]["model"] is False
    for kept in (2, 3, 4, 6):
        assert after[kept] == before[kept], kept
    with connect(url) as conn:
        records = runs.deployments(conn, target="retention")
        assert sorted((r.model_tag, r.bento_tag, r.status) for r in records) == sorted(
            [(v[1].tag, v[1].bento_tag, "deleted"), (v[5].tag, "", "deleted")]
        )
        detail = next(r.detail for r in records if r.model_tag == v[1].tag)
        assert detail["removed"] == pruned[1].removed
        assert detail["reason"] == "retired; champion #3 before the current one, 1 kept"
        assert detail["keep"] == 1
        assert detail["by"].endswith("(driftloop prune-models)")
        # The row stays (runs and promotions name it); its export is gone.
        v1 = registry.get_version(conn, v[1].tag)
        assert (v1.status, v1.bento_tag, v1.bento_uri) == ("retired", v[1].bento_tag, None)

    # `driftloop promote` (and `rollback`) refuse it, saying when and by whom it was pruned.
    assert main(["promote", v[1].tag, "--reason", "bring it back"]) == 1
    err = capsys.readouterr().err
    assert f"model {v[1].tag}'s Bento {v[1].bento_tag} was pruned on " in err
    assert "(driftloop prune-models): nothing is left to serve" in err

    # Again: nothing left to prune, nothing recorded twice.
    assert prune_models(get_settings(), keep=1) == []
    with connect(url) as conn:
        assert len(runs.deployments(conn, target="retention")) == 2


def test_prune_of_an_unknown_model_is_one_line_and_exit_1(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prune-models", "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == "driftloop: error: --model nope: no version of it in the registry (registered: none)\n"
    )
