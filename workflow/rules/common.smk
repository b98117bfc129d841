# Shared helpers (config validation, paths, per-stage params) for the stage files.
import hashlib
import json
import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


# `--config section={key: value}` arrives as strings: give them the schema's types first.
from icd_pipeline.config import coerce_cli_strings

coerce_cli_strings(config)
validate(config, "../schemas/config.schema.yaml")

DATASET = config["dataset"]["name"]
RES = f"results/{DATASET}"
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"
TRAIN_SPLIT = config["dataset"]["train_split"]
EVAL_SPLIT = config["dataset"]["eval_split"]
PACKAGE = Path(workflow.basedir) / "icd_pipeline"


# Stages run `python -m icd_pipeline...`: put the interpreter that runs Snakemake first on
# PATH, so `.venv/bin/snakemake` works without activating the venv (with --sdm conda, each
# job's activated env comes first instead).
envvars:
    "PATH",


os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def data_root():
    """The VOC-layout folder the stages read: generated/prepared under results/, or the
    user's own folder for dataset.source = folder."""
    if config["dataset"]["source"] == "folder":
        return config["dataset"]["root"]
    return f"{RES}/data"


def stage_config(*sections):
    """The config sections a stage reads, as stable JSON: a rule param, so editing one of
    these sections reruns the stage (and everything downstream), and nothing else does.
    """
    return json.dumps(
        {s: config[s] for s in sections}, sort_keys=True, separators=(",", ":")
    )


def code_hash(*modules):
    """Hash of the package modules a stage runs (files or folders under icd_pipeline/).
    Snakemake does not see modules imported by a shell command; as a param, an edit to
    any of them reruns the stage. Shared helpers (config, misc, data/voc) are always in.
    """
    paths = []
    for name in ("config.py", "misc", "data/voc.py", "__init__.py") + modules:
        p = PACKAGE / name
        paths.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    h = hashlib.sha256()
    for p in paths:
        h.update(p.relative_to(PACKAGE).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def deeplab_masks(wildcards):
    """DeepLab trains on pseudo-masks (targets pseudo, saliency) or ground truth (full)."""
    if wildcards.target in ("pseudo", "saliency"):
        return {"masks": f"{RES}/pseudo_masks/masks"}
    return {"manifest": f"{RES}/data/manifest.json"}


def mask_dir_arg(wildcards, input):
    """pseudo: the masks deeplab.pseudo_masks names (icd_crf, the paper's; or icd_seed, the
    ICD seeds with their 255), or icd_sal when seeds.background is saliency; saliency: the
    ICD+saliency seeds (benchmark row); full: ground truth (no argument).
    """
    if wildcards.target == "saliency":
        return f"--mask-dir {input.masks}/icd_sal"
    if wildcards.target == "pseudo":
        return f"--mask-dir {input.masks}/{pseudo_mask_folder()}"
    return ""


def pseudo_mask_folder():
    """The pseudo-mask folder the "pseudo" DeepLab trains on."""
    if config["seeds"]["background"] == "saliency":
        return "icd_sal"
    return config["deeplab"]["pseudo_masks"]


def predict_images(wildcards):
    """The image folder of predict.images; unset is an error that says how to set it."""
    images = config["predict"]["images"]
    if not images:
        raise ValueError(
            "predict.images is not set: name the folder of images to segment, e.g. "
            "snakemake --cores 2 predict --config 'predict={images: /path/to/photos}'"
        )
    return images
