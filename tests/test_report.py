"""Run summary: classifier mAP and the per-class IoU table next to the pseudo-mask table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from icd_pipeline.stages import summarize
from icd_pipeline.summary import per_class_table


def _inputs(tmp_path):
    pd.DataFrame([{"method": m, "miou": v, "miou_authors": v, "left_out_fraction": 0.0, "pixel_acc": 0.9,
                   "pixel_acc_authors": 0.9, "images": 4} for m, v in (("CAM", 0.3), ("ICD+CRF", 0.5))]
                 ).to_csv(tmp_path / "table.csv", index=False)
    rows = [{"method": m, "class": c, "iou": v, "iou_authors": v}
            for m, vals in (("CAM", (0.8, 0.2, np.nan)), ("ICD+CRF", (0.9, 0.4, np.nan)))
            for c, v in zip(("background", "cat", "dog"), vals)]
    pd.DataFrame(rows).to_csv(tmp_path / "per_class.csv", index=False)
    for target, cat in (("pseudo", 0.35), ("full", 0.6)):
        (tmp_path / f"{target}.json").write_text(json.dumps({"miou": cat}))
        pd.DataFrame({"class": ["background", "cat", "dog"], "iou": [0.9, cat, 0.1]}).to_csv(
            tmp_path / f"{target}_pc.csv", index=False)
    (tmp_path / "classifier.json").write_text(json.dumps({"split": "val", "images": 9, "map": 0.875,
                                                          "ap": {"cat": 1.0, "dog": 0.75}}))
    (tmp_path / "bench").mkdir()


def test_summary_has_classifier_map_and_per_class_table(tmp_path):
    _inputs(tmp_path)
    rc = summarize.main(["--dataset", "d", "--pseudo-table", str(tmp_path / "table.csv"),
                      "--deeplab-pseudo", str(tmp_path / "pseudo.json"), "--deeplab-full", str(tmp_path / "full.json"),
                      "--benchmarks", str(tmp_path / "bench"), "--classifier", str(tmp_path / "classifier.json"),
                      "--pseudo-per-class", str(tmp_path / "per_class.csv"),
                      "--deeplab-pseudo-per-class", str(tmp_path / "pseudo_pc.csv"),
                      "--deeplab-full-per-class", str(tmp_path / "full_pc.csv"),
                      "--out-md", str(tmp_path / "s.md"), "--out-csv", str(tmp_path / "s.csv")])
    assert rc == 0
    summary = pd.read_csv(tmp_path / "s.csv").set_index("metric")["value"]
    assert summary["classifier mAP (val)"] == 0.875
    assert summary["fraction of full supervision"] == np.float64(0.35 / 0.6).round(6)
    md = (tmp_path / "s.md").read_text()
    assert "mAP **0.8750**" in md and "## IoU per class" in md
    table = per_class_table(pd.read_csv(tmp_path / "per_class.csv"),
                                   {"full": pd.read_csv(tmp_path / "full_pc.csv")})
    assert list(table.columns) == ["class", "CAM (train)", "ICD+CRF (train)", "DeepLab full (val)"]
    cat = table.set_index("class").loc["cat"]
    assert (cat["CAM (train)"], cat["ICD+CRF (train)"], cat["DeepLab full (val)"]) == (0.2, 0.4, 0.6)
    assert np.isnan(table.set_index("class").loc["dog", "CAM (train)"])
