"""Model specs for tests: the built-in churn spec with approval before promotion switched on."""

from __future__ import annotations

from pathlib import Path

BUILTIN = Path(__file__).parents[1] / "training" / "specs" / "churn.yaml"


def approval_spec(folder: Path, timeout_hours: float = 12) -> Path:
    """Write the churn spec with ``promotion.approval: true`` (and this timeout) under ``folder``;
    return its path, for ``DRIFTLOOP_MODEL_SPEC``."""
    text = BUILTIN.read_text()
    for old, new in (
        ("approval: false", "approval: true"),
        ("approval_timeout_hours: 12", f"approval_timeout_hours: {timeout_hours:g}"),
    ):
        assert old in text, f"{BUILTIN} no longer says {old!r}"
        text = text.replace(old, new)
    path = folder / "approval.yaml"
    path.write_text(text)
    return path
