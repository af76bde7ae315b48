"""Lineage and the Bento's pinned requirements, checked against the repository's own uv.lock."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from training.errors import DriftloopError
from training.lineage import (
    LOCK_FILE,
    REQUIREMENTS_FILE,
    capture,
    check_requirements,
    code_revision,
    locked_versions,
    model_packages,
    pinned_requirements,
    render_requirements,
    serving_closure,
    training_set_sha256,
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "tenure": [1.5, 2.25, None],
            "plan": ["basic", "pro", "basic"],
            "churned": [0, 1, 0],
            "created_at": pd.to_datetime(
                ["2026-11-01T10:00:00Z", "2026-11-03T12:00:00Z", "2026-11-02T00:00:00Z"]
            ),
        }
    )


def test_training_set_hash_ignores_row_and_column_order() -> None:
    frame = _frame()
    shuffled = frame.iloc[[2, 0, 1]][list(reversed(frame.columns))].reset_index(drop=True)
    assert training_set_sha256(shuffled) == training_set_sha256(frame)
    assert re.fullmatch(r"[0-9a-f]{64}", training_set_sha256(frame))


def test_training_set_hash_ignores_how_the_values_are_typed() -> None:
    """Parquet round trips and pandas versions change dtypes, not values: the hash holds."""
    frame = _frame()
    retyped = frame.assign(
        plan=frame["plan"].astype("category"),
        churned=frame["churned"].astype("Int64"),
        request_id=frame["request_id"].astype("string"),
        created_at=frame["created_at"].dt.tz_convert("Europe/Paris"),
    )
    assert training_set_sha256(retyped) == training_set_sha256(frame)


def test_training_set_hash_changes_with_a_value_a_row_or_a_column_name() -> None:
    frame = _frame()
    base = training_set_sha256(frame)
    changed = frame.copy()
    changed.loc[1, "tenure"] = 2.26
    assert training_set_sha256(changed) != base
    assert training_set_sha256(frame.iloc[:2]) != base
    assert training_set_sha256(frame.rename(columns={"plan": "tier"})) != base
    assert training_set_sha256(frame.assign(plan=["basic", "pro", None])) != base
    assert training_set_sha256(pd.concat([frame, frame.iloc[:1]])) != base


def test_capture_spans_the_rows_times_and_counts_them() -> None:
    lineage = capture(_frame())
    assert lineage.data_start == "2026-11-01T10:00:00+00:00"
    assert lineage.data_end == "2026-11-03T12:00:00+00:00"
    assert lineage.data_rows == 3
    assert lineage.packages["scikit-learn"] == locked_versions()["scikit-learn"]
    assert lineage.packages["lightgbm"] == locked_versions()["lightgbm"]
    untimed = capture(_frame().drop(columns="created_at"))
    assert (untimed.data_start, untimed.data_end) == (None, None)


def test_model_packages_are_the_locked_versions_of_the_model_and_its_dependencies() -> None:
    packages = model_packages()
    locked = locked_versions()
    assert {"numpy", "pandas", "scipy", "threadpoolctl", "joblib"} <= set(packages)
    assert "bentoml" not in packages
    assert "apache-airflow" not in packages
    assert all(locked[name] == version for name, version in packages.items())


def test_code_revision_is_the_commit_in_a_checkout_else_the_package_version(tmp_path: Path) -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
        cwd=LOCK_FILE.parent,
    ).stdout.strip()
    assert re.fullmatch(rf"git:{head}(\+dirty)?", code_revision())
    assert code_revision(tmp_path).startswith("driftloop==")


def test_bento_requirements_pin_every_serving_package_to_the_lock() -> None:
    check_requirements()
    pins = pinned_requirements(REQUIREMENTS_FILE.read_text())
    locked = locked_versions()
    assert set(pins) == serving_closure() - {"bentoml"}
    assert all(locked[name] == version for name, version in pins.items())
    assert {"scipy", "pydantic-core", "uvicorn", "starlette"} <= set(pins)
    assert "apache-airflow-core" not in pins
    assert "evidently" not in pins


def test_the_committed_requirements_are_what_the_generator_writes() -> None:
    assert REQUIREMENTS_FILE.read_text() == render_requirements()


def test_every_pin_installs_on_linux_x86_64_python_3_11() -> None:
    """The image is python 3.11 on linux/amd64: each pin needs a wheel for it or an sdist."""
    packages = {p["name"]: p for p in tomllib.loads(LOCK_FILE.read_text())["package"]}
    fits = re.compile(
        r"-(cp311|cp3\d*-abi3|py3|py2\.py3)-[^-]+-(any|.*manylinux[^-]*x86_64[^-]*)\.whl$"
    )
    for name in pinned_requirements(REQUIREMENTS_FILE.read_text()):
        package = packages[name]
        wheels = [w["url"] for w in package.get("wheels", [])]
        assert any(fits.search(url) for url in wheels) or "sdist" in package, name


def test_the_grpc_stubs_runtime_floor_holds() -> None:
    """bentos' gRPC stubs were generated by grpcio-tools 1.85.1 (protobuf 7.35.1 gencode)."""
    pins = pinned_requirements(REQUIREMENTS_FILE.read_text())

    def version(name: str) -> tuple[int, ...]:
        return tuple(int(part) for part in pins[name].split(".")[:3])

    assert version("grpcio") >= (1, 85, 1)
    assert version("protobuf") >= (7, 35, 1)


def test_a_stale_pin_is_refused_naming_it(tmp_path: Path) -> None:
    stale = tmp_path / "requirements.txt"
    stale.write_text(
        REQUIREMENTS_FILE.read_text().replace(
            f"numpy=={locked_versions()['numpy']}", "numpy==1.26.4"
        )
    )
    with pytest.raises(DriftloopError, match=r"pins differ: numpy==1.26.4 \(locked "):
        check_requirements(stale)
    missing = tmp_path / "short.txt"
    missing.write_text(
        "\n".join(
            line
            for line in REQUIREMENTS_FILE.read_text().splitlines()
            if not line.startswith("scipy==")
        )
    )
    with pytest.raises(DriftloopError, match="missing: scipy"):
        check_requirements(missing)
    with pytest.raises(DriftloopError, match=r"is missing: run `python -m training\.lineage"):
        check_requirements(tmp_path / "absent.txt")
