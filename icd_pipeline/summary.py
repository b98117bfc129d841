"""Tables of a finished run and the run's report: the summary rows (pseudo-mask mIoU, DeepLab val
mIoU against full supervision), per-class tables, stage times from Snakemake's benchmark files,
and a Markdown and a self-contained HTML rendering. Used by ``stages.summarize``,
``stages.compare`` and the benchmarks.

An experiment's folder ``results/<dataset>/<experiment>/`` holds ``outputs.json`` (written by the
workflow when it is parsed): where its shared outputs are (relative to ``results/<dataset>/``),
the pseudo-mask folder its DeepLab trained on, its benchmark files, and the figures that could
not be computed, each with the reason (``missing``: e.g. no ground-truth masks). ``load_run``
reads a run through it, so a report can be rebuilt from the folder alone.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

OUTPUTS = "outputs.json"
MASK_NAMES = {"icd_crf": "ICD+CRF pseudo-masks", "icd_seed": "ICD seeds, 255 not trained on",
              "icd_sal": "ICD+saliency seeds", "icd_sal_crf": "ICD+saliency+CRF pseudo-masks",
              "cam_sal": "CAM+saliency seeds", "cam_sal_crf": "CAM+saliency+CRF pseudo-masks",
              "cam_crf": "CAM+CRF pseudo-masks", "cam": "CAM seeds"}


def read_benchmarks(*paths: str | Path) -> pd.DataFrame:
    """One row per Snakemake ``benchmark:`` TSV, given as files or as folders of them (files that
    do not exist are skipped: a stage that has not run): stage, wall seconds, peak RSS (MB)."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.glob("*.tsv")) if path.is_dir() else [path] if path.is_file() else [])
    rows = []
    for tsv in files:
        df = pd.read_csv(tsv, sep="\t")
        if df.empty:
            continue
        rss = pd.to_numeric(df["max_rss"], errors="coerce")
        rows.append({"stage": tsv.stem, "seconds": float(df["s"].iloc[-1]),
                     "max_rss_mb": float(rss.iloc[-1]) if rss.notna().iloc[-1] else float("nan")})
    return pd.DataFrame(rows, columns=["stage", "seconds", "max_rss_mb"])


def _miou(summary: dict | None) -> float:
    value = (summary or {}).get("miou")
    return float("nan") if value is None else float(value)


def summary_rows(pseudo_table: pd.DataFrame | None, deeplab_pseudo: dict | None, deeplab_full: dict | None,
                 deeplab_masks: str = "icd_crf") -> pd.DataFrame:
    """metric, value: the pseudo-mask mIoU of each method (both 255 conventions), DeepLab val mIoU
    on the pseudo-masks and fully supervised, and their ratio; NaN where a figure is missing."""
    rows = []
    if pseudo_table is not None:
        rows += [{"metric": f"pseudo-mask mIoU ({row.method})", "value": float(row.miou)}
                 for row in pseudo_table.itertuples()]
        rows += [{"metric": f"pseudo-mask mIoU, 255 left out ({row.method})", "value": float(row.miou_authors)}
                 for row in pseudo_table.itertuples()]
    masks = MASK_NAMES.get(deeplab_masks, deeplab_masks)
    pseudo, full = _miou(deeplab_pseudo), _miou(deeplab_full)
    rows.append({"metric": f"DeepLab val mIoU (trained on {masks})", "value": pseudo})
    rows.append({"metric": "DeepLab val mIoU (fully supervised)", "value": full})
    ratio = pseudo / full if full and not math.isnan(full) else float("nan")
    rows.append({"metric": "fraction of full supervision", "value": ratio})
    return pd.DataFrame(rows, columns=["metric", "value"])


def per_class_table(pseudo_per_class: pd.DataFrame | None, deeplab: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per class: the pseudo-mask IoU of each method (255 counted as background) on the
    training split, then the DeepLab IoU of each target on the evaluation split (NaN where the
    class is in neither the ground truth nor the prediction, or nothing was scored)."""
    if pseudo_per_class is not None:
        wide = pseudo_per_class.pivot_table(index="class", columns="method", values="iou", sort=False,
                                            dropna=False)
        order = list(dict.fromkeys(pseudo_per_class["method"]))
        table = wide[order].rename(columns=lambda m: f"{m} (train)")
    else:
        first = next(iter(deeplab.values()))
        table = pd.DataFrame(index=pd.Index(first["class"], name="class"))
    for target, df in deeplab.items():
        table[f"DeepLab {target} (val)"] = df.set_index("class")["iou"].reindex(table.index)
    return table.reset_index()


def classifier_rows(classifier: dict) -> pd.DataFrame:
    return pd.DataFrame([{"class": c, "AP": float(ap)} for c, ap in classifier["ap"].items()])


def to_markdown(df: pd.DataFrame, float_fmt: str = "{:.4f}") -> str:
    """A plain Markdown table (no extra dependency); NaN as '-'."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [("-" if math.isnan(v) else float_fmt.format(v)) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- a run


@dataclass
class Run:
    """What a finished experiment produced, read from its folder (``load_run``)."""

    title: str
    folder: Path
    deeplab_masks: str = "icd_crf"
    missing: list[str] = field(default_factory=list)
    pseudo_table: pd.DataFrame | None = None
    pseudo_per_class: pd.DataFrame | None = None
    deeplab: dict[str, dict] = field(default_factory=dict)            # target -> summary.json
    deeplab_per_class: dict[str, pd.DataFrame] = field(default_factory=dict)
    classifier: dict | None = None
    stage_times: pd.DataFrame = field(default_factory=lambda: read_benchmarks())
    pictures: dict[str, Path] = field(default_factory=dict)           # caption -> PNG
    config_text: str = ""

    def summary(self) -> pd.DataFrame:
        rows = summary_rows(self.pseudo_table, self.deeplab.get("pseudo"), self.deeplab.get("full"),
                            self.deeplab_masks)
        if self.classifier is not None:
            head = pd.DataFrame([{"metric": f"classifier mAP ({self.classifier['split']})",
                                  "value": float(self.classifier["map"])}])
            rows = pd.concat([head, rows], ignore_index=True)
        return rows

    def per_class(self) -> pd.DataFrame | None:
        if self.pseudo_per_class is None and not self.deeplab_per_class:
            return None
        return per_class_table(self.pseudo_per_class, self.deeplab_per_class)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def load_run(experiment: str | Path) -> Run:
    """Read an experiment folder (``results/<dataset>/<experiment>``) through its
    ``outputs.json``; files of stages that were left out are simply absent."""
    folder = Path(experiment)
    outputs_path = folder / OUTPUTS
    if not outputs_path.is_file():
        raise FileNotFoundError(f"{outputs_path}: missing; is {folder} an experiment folder written by the "
                                "workflow (results/<dataset>/<experiment>)?")
    outputs = json.loads(outputs_path.read_text())
    shared = folder.parent
    where = lambda key: shared / outputs[key] if outputs.get(key) else None  # noqa: E731
    run = Run(title=f"{outputs.get('dataset', shared.name)}/{outputs.get('experiment', folder.name)}",
              folder=folder, deeplab_masks=outputs.get("deeplab_masks", "icd_crf"),
              missing=list(outputs.get("missing", [])))
    run.pseudo_table = _read_csv(folder / "pseudo_masks" / "table.csv")
    run.pseudo_per_class = _read_csv(folder / "pseudo_masks" / "per_class.csv")
    targets = {"pseudo": folder / "deeplab" / "pseudo"}
    if where("deeplab_full") is not None:
        targets["full"] = where("deeplab_full")
    for target, d in targets.items():
        summary = _read_json(d / "summary.json")
        if summary is not None:
            run.deeplab[target] = summary
            if summary.get("miou") is not None:
                per_class = _read_csv(d / "per_class.csv")
                if per_class is not None:
                    run.deeplab_per_class[target] = per_class
    if where("icd") is not None:
        run.classifier = _read_json(where("icd") / "classifier.json")
    run.stage_times = read_benchmarks(*[shared / p for p in outputs.get("benchmarks", [])])
    candidates = [("Pseudo-masks on the training split", folder / "pseudo_masks" / "grid.png"),
                  ("DeepLab on the evaluation split", folder / "deeplab" / "grid.png"),
                  ("DeepLab IoU per class", folder / "deeplab" / "per_class_iou.png")]
    if where("icd") is not None:
        candidates.append(("ICD training", where("icd") / "loss_curve.png"))
    for target, d in targets.items():
        candidates.append((f"DeepLab training ({target})", d / "loss_curve.png"))
    run.pictures = {caption: path for caption, path in candidates if path.is_file()}
    config = folder / "resolved_config.yaml"
    run.config_text = config.read_text() if config.is_file() else ""
    return run


def run_markdown(run: Run) -> str:
    summary = run.summary()
    md = [f"# icd-pipeline summary: {run.title}", ""]
    if run.missing:
        md += ["## Figures not computed", ""] + [f"- {note}" for note in run.missing] + [""]
    if run.pseudo_table is not None:
        md += ["## Pseudo-masks (training split)", "", to_markdown(run.pseudo_table), ""]
    md += ["## Final segmentation (validation split)", "",
           to_markdown(summary[summary.metric.str.startswith(("DeepLab", "fraction"))]), ""]
    if run.classifier is not None:
        c = run.classifier
        md += [f"## Image-level classifier ({c['split']}, {c['images']} images)", "",
               f"mAP **{c['map']:.4f}** over the {len(c['ap'])} classes with positives.", "",
               to_markdown(classifier_rows(c)), ""]
    per_class = run.per_class()
    if per_class is not None:
        md += ["## IoU per class", "", to_markdown(per_class), ""]
    md += ["## Stage wall time and peak memory", "", to_markdown(run.stage_times, "{:.1f}"), ""]
    return "\n".join(md)


def _html_table(df: pd.DataFrame, float_fmt: str = "{:.4f}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cells = [("-" if math.isnan(v) else float_fmt.format(v)) if isinstance(v, float) else html.escape(str(v))
                 for v in row]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
.missing{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1em}pre{background:#f7f7f7;padding:1em;
overflow-x:auto;font-size:85%}"""


def run_html(run: Run) -> str:
    """The run's report as one self-contained HTML page (tables inline, pictures embedded)."""
    summary = run.summary()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>icd-pipeline: {html.escape(run.title)}"
             f"</title><style>{STYLE}</style></head><body>", f"<h1>icd-pipeline report: {html.escape(run.title)}</h1>"]
    if run.missing:
        parts.append("<div class='missing'><b>Figures not computed</b><ul>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in run.missing) + "</ul></div>")
    parts += ["<h2>Summary</h2>", _html_table(summary)]
    if run.pseudo_table is not None:
        parts += ["<h2>Pseudo-masks (training split)</h2>", _html_table(run.pseudo_table)]
    per_class = run.per_class()
    if per_class is not None:
        parts += ["<h2>IoU per class</h2>", _html_table(per_class)]
    if run.classifier is not None:
        c = run.classifier
        parts += [f"<h2>Image-level classifier ({html.escape(c['split'])}, {c['images']} images)</h2>",
                  f"<p>mAP <b>{c['map']:.4f}</b> over the {len(c['ap'])} classes with positives.</p>",
                  _html_table(classifier_rows(c))]
    for caption, path in run.pictures.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts += [f"<h2>{html.escape(caption)}</h2>", f"<img alt='{html.escape(caption)}' "
                  f"src='data:image/png;base64,{data}'>"]
    parts += ["<h2>Stage wall time and peak memory</h2>", _html_table(run.stage_times, "{:.1f}")]
    if run.config_text:
        parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(run.config_text)}</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts)
