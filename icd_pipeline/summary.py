"""Tables of a finished run: the summary rows (pseudo-mask mIoU, DeepLab val mIoU against full
supervision), per-class tables, stage times from Snakemake's benchmark files, and a plain
Markdown renderer. Used by ``stages.summarize``, ``stages.compare`` and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_benchmarks(*folders: str | Path) -> pd.DataFrame:
    """One row per Snakemake ``benchmark:`` TSV in the folders (the dataset's shared stages,
    then the experiment's): stage, wall seconds, peak RSS (MB)."""
    rows = []
    for tsv in [t for folder in folders for t in sorted(Path(folder).glob("*.tsv"))]:
        df = pd.read_csv(tsv, sep="\t")
        if df.empty:
            continue
        rss = pd.to_numeric(df["max_rss"], errors="coerce")
        rows.append({"stage": tsv.stem, "seconds": float(df["s"].iloc[-1]),
                     "max_rss_mb": float(rss.iloc[-1]) if rss.notna().iloc[-1] else float("nan")})
    return pd.DataFrame(rows, columns=["stage", "seconds", "max_rss_mb"])


MASK_NAMES = {"icd_crf": "ICD+CRF pseudo-masks", "icd_seed": "ICD seeds, 255 not trained on",
              "icd_sal": "ICD+saliency seeds"}


def summary_rows(pseudo_table: pd.DataFrame, deeplab_pseudo: dict, deeplab_full: dict,
                 deeplab_masks: str = "icd_crf") -> pd.DataFrame:
    rows = [{"metric": f"pseudo-mask mIoU ({row.method})", "value": float(row.miou)}
            for row in pseudo_table.itertuples()]
    rows += [{"metric": f"pseudo-mask mIoU, 255 left out ({row.method})", "value": float(row.miou_authors)}
             for row in pseudo_table.itertuples()]
    masks = MASK_NAMES.get(deeplab_masks, deeplab_masks)
    rows.append({"metric": f"DeepLab val mIoU (trained on {masks})", "value": deeplab_pseudo["miou"]})
    rows.append({"metric": "DeepLab val mIoU (fully supervised)", "value": deeplab_full["miou"]})
    ratio = deeplab_pseudo["miou"] / deeplab_full["miou"] if deeplab_full["miou"] else float("nan")
    rows.append({"metric": "fraction of full supervision", "value": ratio})
    return pd.DataFrame(rows)


def per_class_table(pseudo_per_class: pd.DataFrame, deeplab: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per class: the pseudo-mask IoU of each method (255 counted as background) on the
    training split, then the DeepLab IoU of each target on the evaluation split (NaN where the
    class is in neither the ground truth nor the prediction)."""
    wide = pseudo_per_class.pivot_table(index="class", columns="method", values="iou", sort=False, dropna=False)
    order = list(dict.fromkeys(pseudo_per_class["method"]))
    table = wide[order].rename(columns=lambda m: f"{m} (train)")
    for target, df in deeplab.items():
        table[f"DeepLab {target} (val)"] = df.set_index("class")["iou"].reindex(table.index)
    return table.reset_index()


def classifier_rows(classifier: dict) -> pd.DataFrame:
    return pd.DataFrame([{"class": c, "AP": float(ap)} for c, ap in classifier["ap"].items()])


def to_markdown(df: pd.DataFrame, float_fmt: str = "{:.4f}") -> str:
    """A plain Markdown table (no extra dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [float_fmt.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
