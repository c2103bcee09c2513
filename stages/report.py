"""Write reports/report.md, the figures, the side-by-side samples and the headline numbers (DVC's
metrics), then log one MLflow run.

    python -m stages.report --reports reports --samples reports/samples --out reports/report.md \
        --figures reports/figures --side-by-side reports/samples_side_by_side.html --headline reports/headline.json
"""

import json
import logging
from pathlib import Path

import yaml

from tunelab.core import stage
from tunelab.core.io import read_json
from tunelab.track.figures import make_figures
from tunelab.track.headline import headline
from tunelab.track.report import sample_answers, side_by_side_html, write_markdown
from tunelab.track.tracking import (
    TrackingSettings,
    log_pipeline_run,
    tracking_uri,
    wait_for_server,
)

STAGES = ("base", "generate", "curate", "sft", "peft_compare", "preference", "reward", "align", "compress", "evaluate")


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "reports", "samples", "out", "figures", "side-by-side", "headline").parse_args(argv)
    tracking, study = stage.load(args.params, "tracking", TrackingSettings)
    # A tracking server that is down stops the stage before it writes anything, so the report on disk
    # always has its MLflow run.
    wait_for_server(tracking_uri(), tracking.retries, tracking.backoff_s)

    reports = {name: read_json(args.reports / f"{name}.json") for name in STAGES}
    samples = sample_answers(args.samples)
    figures = make_figures(reports, args.figures)
    write_markdown(reports, figures, samples, args.out)
    args.side_by_side.write_text(side_by_side_html(samples))
    # Not sorted like the other reports: DVC prints metrics columns in the file's order.
    args.headline.write_text(json.dumps(headline(reports), indent=2) + "\n")

    # Everything DVC tracks is written above; should the server fail from here on, it costs nothing.
    lock_path = Path("dvc.lock")
    lock = (yaml.safe_load(lock_path.read_text()) or {}) if lock_path.is_file() else {}
    artifacts = {"": [args.out, args.side_by_side, args.headline, lock_path], "figures": figures, "config": [Path(args.params)],
                 "reports": [args.reports / f"{name}.json" for name in STAGES]}
    run_id = log_pipeline_run(study.params, reports, lock, artifacts, tracking)
    logging.getLogger("tunelab").info("logged MLflow run %s", run_id)


if __name__ == "__main__":
    stage.run(main)
