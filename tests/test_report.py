"""The run's report: classifier mAP and the per-class IoU table next to the pseudo-mask table,
read from an experiment folder through its outputs.json; missing figures said, not faked."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from icd_pipeline.stages import summarize
from icd_pipeline.summary import OUTPUTS, load_run, per_class_table


def _experiment(shared, masks=True):
    """results/<dataset>/ with one experiment folder, as the workflow leaves it."""
    exp = shared / "exp"
    (exp / "pseudo_masks").mkdir(parents=True)
    (exp / "deeplab" / "pseudo").mkdir(parents=True)
    full = shared / "deeplab_full" / "k"
    icd = shared / "icd" / "k"
    icd.mkdir(parents=True)
    missing = [] if masks else ["pseudo-mask mIoU: not computed: none of the 4 images of split train has a mask"]
    (exp / OUTPUTS).write_text(json.dumps({
        "dataset": "d", "experiment": "exp", "icd": "icd/k", "deeplab_full": "deeplab_full/k" if masks else None,
        "deeplab_masks": "icd_crf", "missing": missing, "benchmarks": ["benchmarks/train_icd_k.tsv"]}))
    (shared / "benchmarks").mkdir()
    (shared / "benchmarks" / "train_icd_k.tsv").write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t300.0\n")
    if masks:
        pd.DataFrame([{"method": m, "miou": v, "miou_authors": v, "left_out_fraction": 0.0, "pixel_acc": 0.9,
                       "pixel_acc_authors": 0.9, "images": 4} for m, v in (("CAM", 0.3), ("ICD+CRF", 0.5))]
                     ).to_csv(exp / "pseudo_masks" / "table.csv", index=False)
        rows = [{"method": m, "class": c, "iou": v, "iou_authors": v}
                for m, vals in (("CAM", (0.8, 0.2, np.nan)), ("ICD+CRF", (0.9, 0.4, np.nan)))
                for c, v in zip(("background", "cat", "dog"), vals)]
        pd.DataFrame(rows).to_csv(exp / "pseudo_masks" / "per_class.csv", index=False)
    targets = {"pseudo": (exp / "deeplab" / "pseudo", 0.35)}
    if masks:
        targets["full"] = (full, 0.6)
    for folder, miou in targets.values():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps({"miou": miou if masks else None}))
        pd.DataFrame({"class": ["background", "cat", "dog"], "iou": [0.9, miou, 0.1]}).to_csv(
            folder / "per_class.csv", index=False)
    (icd / "classifier.json").write_text(json.dumps({"split": "val", "images": 9, "map": 0.875,
                                                     "ap": {"cat": 1.0, "dog": 0.75}}))
    return exp


def test_summary_has_classifier_map_and_per_class_table(tmp_path):
    exp = _experiment(tmp_path)
    assert summarize.main(["--experiment", str(exp)]) == 0
    summary = pd.read_csv(exp / "report" / "summary.csv").set_index("metric")["value"]
    assert summary["classifier mAP (val)"] == 0.875
    assert summary["fraction of full supervision"] == np.float64(0.35 / 0.6).round(6)
    md = (exp / "report" / "summary.md").read_text()
    assert "mAP **0.8750**" in md and "## IoU per class" in md and "train_icd_k" in md
    assert md.count("## Pseudo-masks") == 1
    html = (exp / "report.html").read_text()
    assert "<td>fraction of full supervision</td>" in html and "Figures not computed" not in html
    table = per_class_table(pd.read_csv(exp / "pseudo_masks" / "per_class.csv"),
                            {"full": pd.read_csv(tmp_path / "deeplab_full" / "k" / "per_class.csv")})
    assert list(table.columns) == ["class", "CAM (train)", "ICD+CRF (train)", "DeepLab full (val)"]
    cat = table.set_index("class").loc["cat"]
    assert (cat["CAM (train)"], cat["ICD+CRF (train)"], cat["DeepLab full (val)"]) == (0.2, 0.4, 0.6)
    assert np.isnan(table.set_index("class").loc["dog", "CAM (train)"])


def test_report_of_a_run_without_masks_says_what_is_missing_and_why(tmp_path):
    exp = _experiment(tmp_path, masks=False)
    run = load_run(exp)
    assert run.pseudo_table is None and "full" not in run.deeplab
    assert summarize.main(["--experiment", str(exp)]) == 0
    summary = pd.read_csv(exp / "report" / "summary.csv").set_index("metric")["value"]
    assert np.isnan(summary["DeepLab val mIoU (fully supervised)"])
    assert np.isnan(summary["fraction of full supervision"])
    md = (exp / "report" / "summary.md").read_text()
    assert "## Figures not computed" in md and "none of the 4 images of split train has a mask" in md
    html = (exp / "report.html").read_text()
    assert "Figures not computed" in html and "none of the 4 images" in html


def test_report_of_a_folder_that_is_no_experiment_fails_clearly(tmp_path, capsys):
    assert summarize.main(["--experiment", str(tmp_path)]) == 1
    assert f"{tmp_path / OUTPUTS}: missing" in capsys.readouterr().err
