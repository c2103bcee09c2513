"""Write reports/report.md and figures, then mirror params and metrics to one MLflow run.

    python -m stages.report --reports reports --out reports/report.md --figures reports/figures
"""

import json
import logging
import os
from pathlib import Path

from tunelab import stage
from tunelab.config import read_params
from tunelab.io import read_json
from tunelab.report import log_to_mlflow, make_figures, write_markdown

STAGES = ("base", "generate", "curate", "sft", "peft_compare", "preference", "align", "compress", "evaluate")


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "reports", "out", "figures")
    parser.add_argument("--experiment", default="tunelab", help="MLflow experiment name")
    args = parser.parse_args(argv)
    params = read_params(args.params)
    logging.getLogger("tunelab").info("params: %s", json.dumps(params, sort_keys=True))

    reports = {name: read_json(args.reports / f"{name}.json") for name in STAGES}
    figures = make_figures(reports, args.figures)
    write_markdown(reports, figures, args.out)
    run_name = os.environ.get("DVC_EXP_NAME") or f"workspace-{params.get('method')}"
    artifacts = [args.out, *figures, Path(args.params), Path("dvc.lock")]
    run_id = log_to_mlflow(params, reports, artifacts, args.experiment, run_name)
    logging.getLogger("tunelab").info("logged MLflow run %s (%s)", run_id, run_name)


if __name__ == "__main__":
    stage.run(main)
