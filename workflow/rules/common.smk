# Shared helpers (config validation, paths, per-stage params) for the stage files.
import glob
import hashlib
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# Snakemake has merged config.yaml, --configfile and --config already; rebuild the config from
# those same layers with icd_pipeline.config's one merge (also behind `python -m
# icd_pipeline.config show`), so that `base: paper` in a preset drops config.yaml, --config's
# strings get the schema's types, and each leaf's origin is known.
from icd_pipeline.config import resolve_workflow_config

_resolved, CONFIG_ORIGINS = resolve_workflow_config(
    configfiles=workflow.config_settings.configfiles,
    cli_config=workflow.config_settings.config,
    default_configfile=os.path.join(workflow.basedir, "config.yaml"),
    use_default=not workflow.config_settings.replace_workflow_config,
)
config.clear()
config.update(_resolved)
validate(config, "../schemas/config.schema.yaml")

DATASET = config["dataset"]["name"]
EXPERIMENT = config["experiment"]
# Shared by every experiment of a dataset: the data (and downloads), the superpixels of each
# superpixel setting, and those stages' logs and benchmarks.
DATA_RES = f"results/{DATASET}"
DATA_LOGS = f"{DATA_RES}/logs"
DATA_BENCH = f"{DATA_RES}/benchmarks"
# One experiment's results: everything from ICD training on, and its resolved config.
RES = f"{DATA_RES}/{EXPERIMENT}"
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"
TRAIN_SPLIT = config["dataset"]["train_split"]
EVAL_SPLIT = config["dataset"]["eval_split"]
PACKAGE = Path(workflow.basedir) / "icd_pipeline"
from icd_pipeline.models.saliency import KNOWN_MODELS as KNOWN_SALIENCY_MODELS


# Stages run `python -m icd_pipeline...`: put the interpreter that runs Snakemake first on
# PATH, so `.venv/bin/snakemake` works without activating the venv (with --sdm conda, each
# job's activated env comes first instead).
envvars:
    "PATH",


os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


# The rules of the chain to the pseudo-masks (superpixels, feature cache, ICD training, maps,
# pseudo-masks) are the DAG's critical path: they run ahead of DeepLab on ground truth, which
# would otherwise hold, at deeplab_threads(), cores their all-core jobs wait for. The two
# DeepLab trainings come next, ahead of the short evaluation and picture jobs: once the
# pseudo-masks exist both start together (on the tiny test DAG the scheduler otherwise ran the
# evaluation beside the first training and the second training only after it).
CHAIN_PRIORITY = 2
DEEPLAB_TRAINING_PRIORITY = 1


def local_cores():
    """--cores of a run on one machine; None on a cluster, where Snakemake has no --cores
    (reading workflow.cores there raises WorkflowError)."""
    try:
        return workflow.cores
    except WorkflowError:
        return None


def all_threads():
    """Threads of the chain's jobs (superpixels, feature cache, ICD training, maps, CRF
    pseudo-masks) and of predict: all of --cores (2 on this project's 2-core reference machine,
    as before). The chain's jobs wait on each other, so one job at a time holds the machine,
    and their CPU work (superpixel and CRF process pools, torch threads) scales with it: at a
    fixed 2, `--cores 16` on a GPU machine left the CRF at 2 processes. A cluster run has no
    --cores: 2 there (the SLURM profile's set-threads gives the CPU stages 8).
    """
    cores = local_cores()
    return 2 if cores is None else cores


def deeplab_threads():
    """Threads of each DeepLab job: half of --cores (at least 1), so that the two trainings
    (pseudo, full), independent and the DAG's longest jobs, run side by side. A training step
    gains only ~1.3x from a second thread (benchmarks/deeplab_step.py: 180-190 ms at one
    thread, 109-141 ms at two); side by side at one thread each on 2 cores the embedded
    default's two trainings took 148 s against 238 s one after the other at two threads.
    A cluster run has no --cores: each job gets 2 there (the profile's set-threads wins).
    """
    cores = local_cores()
    return 2 if cores is None else max(1, cores // 2)


def data_root():
    """The VOC-layout folder the stages read: generated/prepared under results/, or the
    user's own folder for dataset.source = folder."""
    if config["dataset"]["source"] == "folder":
        return config["dataset"]["root"]
    return f"{DATA_RES}/data"


def superpixel_key():
    """The shared superpixel folder of this superpixel setting, <feature_backbone>-<hash of the
    sections the stage reads>: experiments that agree on them share one file, and those that
    differ do not overwrite each other."""
    settings = stage_config("superpixels", "device").encode()
    digest = hashlib.sha256(settings).hexdigest()[:8]
    return f"{config['superpixels']['feature_backbone']}-{digest}"


def saliency_key():
    """The shared folder of this saliency setting, <model>-<hash of the saliency section> (for a
    model given by path, of the file's sha256 too): experiments that agree on it share the maps.
    """
    sal = config["saliency"]
    settings = stage_config("saliency")
    model = Path(os.path.expanduser(sal["model"]))
    if sal["model"] not in KNOWN_SALIENCY_MODELS and model.is_file():
        from icd_pipeline.misc.io import sha256_file

        settings += sha256_file(model)
        name = model.stem
    else:
        name = sal["model"]
    digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def saliency_inputs(wildcards):
    """The saliency stage reads the dataset and the model file; a model that is not installed
    stops the DAG with the command that fetches it."""
    from icd_pipeline.models.saliency import SaliencyModelError, resolve_model

    try:
        model, _ = resolve_model(config["saliency"]["model"])
    except SaliencyModelError as exc:
        raise WorkflowError(str(exc)) from None
    return {"manifest": f"{DATA_RES}/data/manifest.json", "model": str(model)}


def stage_saliency_maps():
    """The saliency stage's maps of the training split when the seeds need them: with
    seeds.background saliency, no seeds.saliency_dir, and not the embedded generator's
    synthetic Saliency/ (which make_pseudo_masks reads itself, as before); else None."""
    seeds, dataset = config["seeds"], config["dataset"]
    if seeds["background"] != "saliency" or seeds["saliency_dir"]:
        return None
    if dataset["source"] == "synthetic" and dataset["synthetic"]["saliency"]["enabled"]:
        return None
    return f"{SALIENCY}/{TRAIN_SPLIT}"


def pseudo_mask_inputs(wildcards):
    """make_pseudo_masks reads the maps, and the saliency stage's maps when the seeds use them."""
    inputs = {"maps": f"{RES}/maps/{TRAIN_SPLIT}.h5"}
    if stage_saliency_maps():
        inputs["saliency"] = stage_saliency_maps()
    return inputs


def saliency_arg(wildcards, input):
    """' --saliency-dir DIR' when the rule's input has the saliency stage's maps."""
    return f" --saliency-dir {input.saliency}" if "saliency" in input.keys() else ""


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
    """DeepLab trains on pseudo-masks (targets pseudo, saliency) or ground truth (full);
    from the feature cache when deeplab.feature_cache is on."""
    if wildcards.target in ("pseudo", "saliency"):
        inputs = {"masks": f"{RES}/pseudo_masks/masks"}
    else:
        inputs = {"manifest": f"{DATA_RES}/data/manifest.json"}
    if config["deeplab"]["feature_cache"]:
        inputs["features"] = f"{RES}/features/{TRAIN_SPLIT}.h5"
    return inputs


def cache_arg(wildcards, input):
    """' --feature-cache FILE' when the rule's input has the feature cache (shell: no space before)."""
    return f" --feature-cache {input.features}" if "features" in input.keys() else ""


def mask_dir_arg(wildcards, input):
    """pseudo: the masks deeplab.pseudo_masks names (icd_crf, the paper's; or icd_seed, the
    ICD seeds with their 255), or the image+saliency ones when seeds.background is saliency;
    saliency: the image+saliency masks (benchmark row); full: ground truth (no argument).
    """
    if wildcards.target == "saliency":
        return f"--mask-dir {input.masks}/{saliency_mask_folder()}"
    if wildcards.target == "pseudo":
        return f"--mask-dir {input.masks}/{pseudo_mask_folder()}"
    return ""


def saliency_mask_folder():
    """The image+saliency masks DeepLab trains on: <seeds.saliency_classes>_sal, the CRF's
    <...>_sal_crf with seeds.saliency_crf."""
    seeds = config["seeds"]
    crf = "_crf" if seeds["saliency_crf"] else ""
    return f"{seeds['saliency_classes']}_sal{crf}"


def pseudo_mask_folder():
    """The pseudo-mask folder the "pseudo" DeepLab trains on."""
    if config["seeds"]["background"] == "saliency":
        return saliency_mask_folder()
    return config["deeplab"]["pseudo_masks"]


def icd_training_inputs(wildcards):
    """train_icd reads the superpixels, and the frozen-backbone feature cache when
    icd.feature_cache is on."""
    inputs = {
        "manifest": f"{DATA_RES}/data/manifest.json",
        "superpixels": f"{SUPERPIXELS}/{TRAIN_SPLIT}.h5",
    }
    if config["icd"]["feature_cache"]:
        inputs["features"] = f"{RES}/features/{TRAIN_SPLIT}.h5"
    return inputs


def feature_cache_config():
    """Only the icd keys that define the cached features (plus seed and device): changing
    lr or epochs retrains the heads without recomputing the cache."""
    from icd_pipeline.feature_cache import BUILD_KEYS

    icd = {k: config["icd"][k] for k in BUILD_KEYS}
    return json.dumps(
        {"seed": config["seed"], "device": config["device"], "icd": icd},
        sort_keys=True,
        separators=(",", ":"),
    )


def maps_inputs(wildcards):
    """extract_maps reads the trained model, and the feature cache of the training split
    when there is one (the passes it holds are not recomputed)."""
    inputs = {"model": f"{RES}/icd/model.pt"}
    if config["icd"]["feature_cache"] and wildcards.split == TRAIN_SPLIT:
        inputs["features"] = f"{RES}/features/{TRAIN_SPLIT}.h5"
    return inputs


def finished_experiments():
    """This experiment and every other one of the dataset that has finished (its summary),
    so that `compare` reruns when one of them changes."""
    done = {
        os.path.dirname(os.path.dirname(p))
        for p in glob.glob(f"{DATA_RES}/*/report/summary.csv")
    }
    done.add(RES)
    return sorted(done)


def predict_images(wildcards):
    """The image folder of predict.images; unset is an error that says how to set it."""
    images = config["predict"]["images"]
    if not images:
        raise ValueError(
            "predict.images is not set: name the folder of images to segment, e.g. "
            "snakemake --cores 2 predict --config 'predict={images: /path/to/photos}'"
        )
    return images
