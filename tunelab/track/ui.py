"""The MLflow UI as `make ui` serves it: MLflow's own server, opening experiments on their runs table.

MLflow 3.17's UI chooses between its GenAI view (a traces overview) and its model-training view
(the runs table) from one setting kept in the browser, which is GenAI until the sidebar's switch
is used; it does not act on the experiment's `mlflow.experimentKind` tag (tracking.EXPERIMENT_KIND).
`mlflow ui --app-name tunelab` (the `mlflow.app` entry point in pyproject.toml, the plugin hook
MLflow's own `basic-auth` app uses) serves MLflow's app with one change: its page sets that setting
to model training before MLflow's code reads it, when the browser holds none. A researcher who
switches to GenAI keeps that choice.
"""

from __future__ import annotations

import json
from pathlib import Path

# MLflow's useLocalStorage hook keeps `<key>_v<version>` as JSON; the workflow type is key
# "mlflow.workflowType", version 1, values "genai" and "machine_learning".
WORKFLOW_SETTING = "mlflow.workflowType_v1"
MODEL_TRAINING = "machine_learning"


def with_model_training_first(index_html: str) -> str:
    """MLflow's page with a first script that sets the model-training view where none is chosen."""
    key, value = json.dumps(WORKFLOW_SETTING), json.dumps(json.dumps(MODEL_TRAINING))
    # try: a browser that refuses localStorage still gets MLflow's page, on MLflow's own default.
    script = f"<script>try{{if(localStorage.getItem({key})===null)localStorage.setItem({key},{value})}}catch(e){{}}</script>"
    if "<head>" not in index_html:
        raise ValueError("MLflow's index.html has no <head> to put the default view in: this MLflow version "
                         "is not the one tunelab.track.ui was written for; run `mlflow ui` without --app-name")
    return index_html.replace("<head>", "<head>" + script, 1)


def create_app():
    """MLflow's server app (Flask, or FastAPI around it under uvicorn) with the page above at "/"."""
    from flask import Response
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app
    from mlflow.server.fastapi_app import create_fastapi_app

    index = Path(app.static_folder) / "index.html"
    if index.is_file():  # a source install of MLflow has no built UI; its own page says so
        page = with_model_training_first(index.read_text())
        app.view_functions["serve"] = lambda: Response(page, mimetype="text/html")
    return create_fastapi_app(app) if _MLFLOW_SGI_NAME.get() == "uvicorn" else app
