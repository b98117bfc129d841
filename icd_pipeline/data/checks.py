"""Checks of a user's dataset folder (``dataset.source: folder``) cheap enough to run when the
workflow is parsed, before any job: no image is decoded, only file names, split lists and
label files are read (``data.folder.scan_folder``). They refuse what would otherwise fail
minutes into a run.

- :func:`dataset_facts`: layout, classes, split sizes, masks per split, images per class.
- :func:`preflight` / :func:`preflight_errors`: those facts and the list of problems (empty
  when the run can start).
- :func:`mask_coverage`: per split, how many images have a mask file (stages that score
  against ground truth need every image of their split to have one).

The data stage (``stages/validate_dataset.py``, ``data.folder.build_view``) repeats the label
checks and decodes every image and mask; these functions only move the failures earlier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from icd_pipeline.data.folder import empty_class_message, empty_classes, scan_folder
from icd_pipeline.data.voc import DataError

# the training stages drop a last incomplete batch, so a split smaller than their batch trains on nothing
BATCH_KEYS = (("icd", "batch_size"), ("deeplab", "batch_size"))


@dataclass(frozen=True)
class DatasetFacts:
    """What the workflow needs to know about a dataset folder when it is parsed.

    - ``root``: the folder (``dataset.root``) as given.
    - ``layout``: ``"voc"`` (``JPEGImages/``) or ``"plain"`` (``labels.csv``).
    - ``label_source``: ``"labels.csv"`` (plain), ``"xml"``, ``"csv"`` (``image_labels.csv``)
      or ``"mask"`` (VOC layout).
    - ``class_names``: background first, then the object classes in class-id order.
    - ``train_split``, ``eval_split``: the split names (``dataset.train_split`` /
      ``eval_split``; they may be equal).
    - ``splits``: {split: number of images}, for those two splits.
    - ``masks``: {split: number of those images that have a mask file}.
    - ``images_per_class``: {split: {object class: images labelled with it}}, or None when the
      labels come from the masks (not decoded at parse time).
    """

    root: Path
    layout: str
    label_source: str
    class_names: tuple[str, ...]
    train_split: str
    eval_split: str
    splits: dict[str, int]
    masks: dict[str, int]
    images_per_class: dict[str, dict[str, int]] | None

    def has_all_masks(self, split: str) -> bool:
        """Every image of ``split`` has a mask file (ground-truth stages can run on it)."""
        return self.masks[split] == self.splits[split]


def _scan_facts(dataset: dict):
    scan = scan_folder(dataset)
    train, evaluation = dataset.get("train_split", "train"), dataset.get("eval_split", "val")
    per_class = None
    if scan.labels is not None:
        per_class = {s: scan.images_per_class(s) for s in scan.splits}
    facts = DatasetFacts(
        root=scan.root,
        layout=scan.layout,
        label_source=scan.label_source,
        class_names=scan.class_names,
        train_split=train,
        eval_split=evaluation,
        splits={s: len(ids) for s, ids in scan.splits.items()},
        masks={s: len(scan.with_mask[s]) for s in scan.splits},
        images_per_class=per_class,
    )
    return facts, scan


def dataset_facts(dataset: dict) -> DatasetFacts:
    """The facts of the folder ``dataset.root`` (``dataset``: the resolved ``dataset`` config
    section). Reads file names, split lists and labels only (no image decoded; about 0.1 s for
    the 1,300 images of the VOC sample with XML labels). Raises DataError naming the file (and
    line) when the folder cannot be read: no such folder, neither layout (or both), a missing
    or empty split list, a listed image missing, a bad label, an image without a label."""
    return _scan_facts(dataset)[0]


def preflight(config: dict) -> tuple[DatasetFacts | None, list[str]]:
    """(facts, errors) of the folder ``dataset.root`` in one read: the workflow calls this when
    it is parsed. ``config``: the resolved configuration (sections dataset, icd, deeplab).
    ``errors`` lists every problem that would stop a run later, each naming the file (and line)
    or the config key and what is wrong; it is empty when the run can start:

    - what :func:`dataset_facts` raises (then ``facts`` is None and this is the one message);
    - the training split smaller than ``icd.batch_size`` or ``deeplab.batch_size`` (the
      training stages drop an incomplete last batch);
    - a class without a training image, unless ``dataset.allow_empty_classes`` (not checked
      here when the labels come from the masks: the data stage checks it).
    """
    dataset = config["dataset"]
    try:
        facts, scan = _scan_facts(dataset)
    except DataError as exc:
        return None, [str(exc)]
    errors = []
    train = facts.train_split
    n_train = facts.splits[train]
    for section, key in BATCH_KEYS:
        batch = config.get(section, {}).get(key)
        if batch is not None and n_train < int(batch):
            errors.append(f"{scan.split_files[train]}: the training split {train!r} has {n_train} images, fewer "
                          f"than {section}.{key} = {batch}: a training epoch would have no batch; set "
                          f"{section}.{key} to at most {n_train}, or add images")
    empty = empty_classes(scan, train)
    if empty and not dataset.get("allow_empty_classes", False):
        errors.append(empty_class_message(scan, train, empty))
    return facts, errors


def preflight_errors(config: dict) -> list[str]:
    """The ``errors`` of :func:`preflight`."""
    return preflight(config)[1]


def mask_coverage(dataset: dict) -> dict[str, tuple[int, int]]:
    """{split: (images with a mask file, images)} for the train and eval splits of the folder
    ``dataset.root``, from file names only (no image decoded). Raises DataError like
    :func:`dataset_facts`."""
    facts = dataset_facts(dataset)
    return {s: (facts.masks[s], facts.splits[s]) for s in facts.splits}
