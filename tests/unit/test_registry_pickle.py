"""A model saved where dill is imported (every Airflow task process) loads where dill is absent (the
Bento's image). Found by running the image of a DAG-trained champion: it failed with
``No module named 'dill'``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LOAD = """
import sys
sys.modules["dill"] = None  # importing dill now raises ModuleNotFoundError, as in the image
from training.registry import load_model
from training.synthetic import generate
pipeline, spec = load_model(sys.argv[1])
frame = generate(5, seed=4)
print(len(pipeline.predict_proba(frame[spec.feature_names])))
"""


def _python(code: str, *args: str, home: Path) -> str:
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_a_model_saved_beside_dill_loads_without_it() -> None:
    import dill  # noqa: F401  (what Airflow's task runner has imported before our code runs)

    from training.registry import save_model
    from training.spec import load_spec
    from training.synthetic import generate
    from training.train import fit

    spec = load_spec()
    tag = save_model(spec, fit(spec, generate(600, seed=3)), metrics={}, train_data_uri="memory")
    # The session's private BentoML store (conftest), read by a process where dill cannot load.
    assert _python(LOAD, tag, home=Path(os.environ["BENTOML_HOME"])) == "5"
