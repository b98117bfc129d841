"""Stage ``summarize``: an experiment's report, from its folder (``summary.load_run``: the files of
the stages, found through the folder's ``outputs.json``):

    python -m icd_pipeline.stages.summarize --experiment results/<dataset>/<experiment>

writes ``report/summary.md`` and ``report/summary.csv`` (pseudo-mask mIoU of each method, DeepLab
val mIoU on the pseudo-masks and fully supervised, their ratio, the classifier's mAP), and
``report.html``: one self-contained page with those tables inline, the per-class IoU, the
pictures and loss curves embedded, stage times and the resolved configuration. Figures that
could not be computed (a dataset without ground-truth masks) are listed with the reason, and
their cells are empty. ``icd-pipeline report results/<dataset>/<experiment>`` runs the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..misc.commands import command_name
from ..misc.io import atomic_path
from ..summary import load_run, run_html, run_markdown


def write_report(experiment: str | Path) -> dict[str, Path]:
    """Write the three report files of an experiment folder; their paths."""
    run = load_run(experiment)
    folder = Path(experiment)
    out = {"md": folder / "report" / "summary.md", "csv": folder / "report" / "summary.csv",
           "html": folder / "report.html"}
    with atomic_path(out["csv"]) as tmp:
        run.summary().to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out["md"]) as tmp:
        tmp.write_text(run_markdown(run))
    with atomic_path(out["html"]) as tmp:
        tmp.write_text(run_html(run))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.summarize"),
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, metavar="DIR",
                        help="the experiment's folder, results/<dataset>/<experiment>")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.experiment)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out["md"].read_text())
    print(f"report: {out['html']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
