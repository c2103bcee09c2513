"""`make ui`'s MLflow app (tunelab.track.ui): the page it serves; the browser test opens it in Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.track.ui import MODEL_TRAINING, WORKFLOW_SETTING, with_model_training_first


def mlflow_index() -> str:
    from mlflow.server import app

    return (Path(app.static_folder) / "index.html").read_text()


def test_the_setting_is_written_before_mlflows_code_loads_and_only_where_none_is_chosen():
    page = with_model_training_first(mlflow_index())
    ours = page[page.index("<script>"):page.index("</script>") + len("</script>")]
    assert page.index(ours) < page.index("<script defer")  # before MLflow's bundle
    assert f"localStorage.getItem({json.dumps(WORKFLOW_SETTING)})===null" in ours
    assert f"localStorage.setItem({json.dumps(WORKFLOW_SETTING)},{json.dumps(json.dumps(MODEL_TRAINING))})" in ours
    assert page.replace(ours, "", 1) == mlflow_index()  # nothing else changed


def test_a_page_without_head_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="run `mlflow ui` without --app-name"):
        with_model_training_first("<html><body>MLflow</body></html>")
