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
    default_configfile=DEFAULT_CONFIGFILE,
    use_default=not workflow.config_settings.replace_workflow_config,
)
config.clear()
config.update(_resolved)
validate(config, "../schemas/config.schema.yaml")

DATASET = config["dataset"]["name"]
# a null dataset.name stands for the folder's name (icd_pipeline.config), which needs the folder
if DATASET is None:
    raise WorkflowError(
        "dataset.root must name the dataset folder when dataset.source is 'folder', e.g. "
        "--config 'dataset={root: /path/to/photos}'"
    )
EXPERIMENT = config["experiment"]
# Shared by every experiment of a dataset: the data (and downloads), and every output that
# depends on part of the settings only, in a folder named by a hash of exactly those settings
# (superpixels, feature cache, ICD model, maps, fully supervised DeepLab; settings_key()), so
# two experiments that agree on them share one copy; plus those stages' logs and benchmarks.
DATA_RES = f"results/{DATASET}"
DATA_LOGS = f"{DATA_RES}/logs"
DATA_BENCH = f"{DATA_RES}/benchmarks"
# One experiment's own results: from the pseudo-masks on, and its resolved config.
RES = f"{DATA_RES}/{EXPERIMENT}"
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"
TRAIN_SPLIT = config["dataset"]["train_split"]
EVAL_SPLIT = config["dataset"]["eval_split"]
PACKAGE = Path(workflow.basedir).parent / "icd_pipeline"
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
    """The VOC-layout folder the stages read: generated/prepared under results/, or for
    dataset.source = folder the view of the user's folder the data stage built there."""
    return f"{DATA_RES}/data"


def settings_key(name, settings):
    """<name>-<first 8 hex digits of the sha256 of ``settings`` (stable JSON)>: the folder of a
    shared output, named by the settings it depends on."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def superpixel_key():
    """The shared superpixel folder of this superpixel setting: experiments that agree on the
    sections the stage reads share one file, and those that differ do not overwrite each other.
    """
    return settings_key(
        config["superpixels"]["feature_backbone"],
        json.loads(stage_config("superpixels", "device")),
    )


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
    inputs = {"maps": f"{MAPS}/{TRAIN_SPLIT}.h5"}
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
    if wildcards.get("target", "full") in ("pseudo", "saliency"):
        inputs = {"masks": f"{RES}/pseudo_masks/masks"}
    else:
        inputs = {"manifest": f"{DATA_RES}/data/manifest.json"}
    if config["deeplab"]["feature_cache"]:
        inputs["features"] = f"{FEATURES}/{TRAIN_SPLIT}.h5"
    return inputs


def cache_arg(wildcards, input):
    """' --feature-cache FILE' when the rule's input has the feature cache (shell: no space before)."""
    return f" --feature-cache {input.features}" if "features" in input.keys() else ""


def mask_dir_arg(wildcards, input):
    """pseudo: the masks deeplab.pseudo_masks names (icd_crf, the paper's; or icd_seed, the
    ICD seeds with their 255), or the image+saliency ones when seeds.background is saliency;
    saliency: the image+saliency masks (benchmark row); full: ground truth (no argument).
    """
    target = wildcards.get("target", "full")
    if target == "saliency":
        return f"--mask-dir {input.masks}/{saliency_mask_folder()}"
    if target == "pseudo":
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
        inputs["features"] = f"{FEATURES}/{TRAIN_SPLIT}.h5"
    return inputs


def feature_cache_config():
    """What the cached features depend on: the icd keys that build them (backbone, weights,
    output stride, input scale, scales; flips are always both), the device, and the seed only
    for a randomly initialised backbone (pretrained weights do not depend on it). Changing lr,
    epochs or the seed of a pretrained run reuses the cache."""
    from icd_pipeline.feature_cache import BUILD_KEYS

    settings = {
        "device": config["device"],
        "icd": {k: config["icd"][k] for k in BUILD_KEYS},
    }
    if not config["icd"]["pretrained"]:
        settings["seed"] = config["seed"]
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def deeplab_train_config(target):
    """The sections a DeepLab training reads. The fully supervised one does not depend on which
    pseudo-masks the other trains on (deeplab.pseudo_masks), so that key is left out of its
    settings and an experiment that changes it shares the full model."""
    cfg = json.loads(stage_config("seed", "device", "deeplab"))
    if target == "full":
        cfg["deeplab"].pop("pseudo_masks", None)
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))


def deeplab_infer_config(target):
    """The sections DeepLab inference reads: device and deeplab, and the pseudo-mask CRF only
    when the test-time CRF borrows its parameters (deeplab.test_crf without test_crf_params).
    """
    cfg = json.loads(stage_config("device", "deeplab"))
    if target == "full":
        cfg["deeplab"].pop("pseudo_masks", None)
    section = config["deeplab"]
    if section["test_crf"] and not section.get("test_crf_params"):
        cfg["pseudo_masks"] = {"crf": config["pseudo_masks"]["crf"]}
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))


# The shared, settings-keyed outputs of this configuration (see DATA_RES above).
SUPERPIXELS = f"{DATA_RES}/superpixels/{superpixel_key()}"
FEATURES_KEY = settings_key(
    config["icd"]["backbone"], json.loads(feature_cache_config())
)
FEATURES = f"{DATA_RES}/features/{FEATURES_KEY}"
ICD_KEY = settings_key(
    config["icd"]["backbone"],
    {
        "config": json.loads(stage_config("seed", "device", "icd")),
        "splits": [TRAIN_SPLIT, EVAL_SPLIT],
        "superpixels": superpixel_key(),
        "features": FEATURES_KEY if config["icd"]["feature_cache"] else None,
    },
)
ICD = f"{DATA_RES}/icd/{ICD_KEY}"
MAPS_KEY = settings_key(ICD_KEY, json.loads(stage_config("device", "maps")))
MAPS = f"{DATA_RES}/maps/{MAPS_KEY}"
DEEPLAB_FULL_KEY = settings_key(
    config["deeplab"]["backbone"],
    {
        "train": json.loads(deeplab_train_config("full")),
        "infer": json.loads(deeplab_infer_config("full")),
        "splits": [TRAIN_SPLIT, EVAL_SPLIT],
        "features": FEATURES_KEY if config["deeplab"]["feature_cache"] else None,
    },
)
DEEPLAB_FULL = f"{DATA_RES}/deeplab_full/{DEEPLAB_FULL_KEY}"


def dataset_preflight():
    """For a user's folder (dataset.source: folder), read when the workflow is parsed, before
    any job runs (data.checks.preflight: file names, split lists and labels; no image decoded):
    stop with every problem a stage would hit later (an unreadable label, a training split
    smaller than a batch, a class without a training image), and return {split: (images with
    a mask, images)} for the train and eval splits. None for the generated and downloaded
    datasets, which have every mask."""
    if config["dataset"]["source"] != "folder":
        return None
    from icd_pipeline.data.checks import preflight

    facts, errors = preflight(config)
    if errors:
        raise WorkflowError(
            "the dataset cannot be used as configured:\n"
            + "\n".join(f"  - {e}" for e in errors)
        )
    return {split: (facts.masks[split], facts.splits[split]) for split in facts.splits}


MASKS = dataset_preflight()


def masks_of(split):
    """'all', 'some' or 'none': how many of a split's images have a ground-truth mask."""
    if MASKS is None:
        return "all"
    have, total = MASKS[split]
    return "all" if have == total else "some" if have else "none"


def mask_note(split, what):
    """Why a figure on ``split`` is missing or partial ('' when every image has a mask)."""
    kind = masks_of(split)
    if kind == "all":
        return ""
    have, total = MASKS[split]
    if kind == "none":
        return f"{what}: not computed: none of the {total} images of split {split} has a mask"
    return (
        f"{what}: over the {have} of {total} images of split {split} that have a mask"
    )


# Figures that need ground truth run where it exists (and over the images that have it).
SCORE_PSEUDO_MASKS = masks_of(TRAIN_SPLIT) != "none"
TRAIN_FULL = masks_of(TRAIN_SPLIT) == "all"
MISSING = [
    note
    for note in (
        mask_note(TRAIN_SPLIT, "pseudo-mask mIoU"),
        mask_note(EVAL_SPLIT, "DeepLab val mIoU"),
        (
            ""
            if TRAIN_FULL
            else "fully supervised DeepLab: not trained: it needs a mask for every training image"
            f" ({MASKS[TRAIN_SPLIT][0]} of {MASKS[TRAIN_SPLIT][1]} of split {TRAIN_SPLIT} have one)"
        ),
    )
    if note
]


def full_supervision_inputs(wildcards):
    """The fully supervised DeepLab's inputs; asking for it without masks is an error that
    says so (`all` leaves it out)."""
    if not TRAIN_FULL:
        have, total = MASKS[TRAIN_SPLIT]
        raise WorkflowError(
            f"the fully supervised DeepLab needs a mask for every image of split {TRAIN_SPLIT}, "
            f"and {config['dataset']['root']} has {have} of {total}: leave it out (`all` does) "
            "or add the masks"
        )
    return deeplab_masks(wildcards)


def deeplab_summaries():
    """The DeepLab evaluations the run builds: pseudo, and full where it can be trained."""
    paths = [f"{RES}/deeplab/pseudo/summary.json"]
    if TRAIN_FULL:
        paths.append(f"{DEEPLAB_FULL}/summary.json")
    return paths


def deeplab_picture_inputs(wildcards):
    inputs = {
        "pseudo": f"{RES}/deeplab/pseudo/predictions",
        "per_class_pseudo": f"{RES}/deeplab/pseudo/per_class.csv",
    }
    if TRAIN_FULL:
        inputs["full"] = f"{DEEPLAB_FULL}/predictions"
        inputs["per_class_full"] = f"{DEEPLAB_FULL}/per_class.csv"
    return inputs


def benchmark_files():
    """The Snakemake benchmark files of this experiment's jobs (its stage times), relative to
    results/<dataset>/: the shared stages' (named by their keys), then its own."""
    source = config["dataset"]["source"]
    data_rules = {
        "synthetic": ["make_embedded_dataset"],
        "voc2012": ["download_voc", "prepare_voc"],
        "coco2014": ["download_coco", "prepare_coco"],
        "folder": ["validate_dataset"],
    }[source]
    shared = [f"{DATA_BENCH}/{r}.tsv" for r in data_rules]
    shared.append(f"{DATA_BENCH}/superpixels_{superpixel_key()}_{TRAIN_SPLIT}.tsv")
    if config["icd"]["feature_cache"]:
        shared.append(f"{DATA_BENCH}/feature_cache_{FEATURES_KEY}_{TRAIN_SPLIT}.tsv")
    shared.append(f"{DATA_BENCH}/train_icd_{ICD_KEY}.tsv")
    shared.append(f"{DATA_BENCH}/extract_maps_{MAPS_KEY}_{TRAIN_SPLIT}.tsv")
    if stage_saliency_maps():
        shared.append(f"{DATA_BENCH}/saliency_{saliency_key()}_{TRAIN_SPLIT}.tsv")
    if TRAIN_FULL:
        full = DEEPLAB_FULL_KEY
        shared += [
            f"{DATA_BENCH}/train_deeplab_{full}.tsv",
            f"{DATA_BENCH}/infer_deeplab_{full}.tsv",
        ]
    own = [
        "make_pseudo_masks",
        "pseudo_mask_pictures",
        "train_deeplab_pseudo",
        "infer_deeplab_pseudo",
        "deeplab_pictures",
    ]
    if SCORE_PSEUDO_MASKS:
        own.insert(1, "eval_pseudo_masks")
    files = shared + [f"{BENCH}/{name}.tsv" for name in own]
    return [os.path.relpath(f, DATA_RES) for f in files]


def run_outputs():
    """outputs.json of the experiment: where its shared outputs are, relative to
    results/<dataset>/ (null: not built), the pseudo-masks its DeepLab trained on, the figures
    it cannot compute and why, and its benchmark files (summary.load_run reads it)."""
    rel = lambda path: os.path.relpath(path, DATA_RES)
    return {
        "dataset": DATASET,
        "experiment": EXPERIMENT,
        "train_split": TRAIN_SPLIT,
        "eval_split": EVAL_SPLIT,
        "superpixels": rel(SUPERPIXELS),
        "features": rel(FEATURES) if config["icd"]["feature_cache"] else None,
        "icd": rel(ICD),
        "maps": rel(MAPS),
        "deeplab_full": rel(DEEPLAB_FULL) if TRAIN_FULL else None,
        "deeplab_masks": pseudo_mask_folder(),
        "missing": MISSING,
        "benchmarks": benchmark_files(),
    }


def summary_inputs(wildcards):
    """Every file the report reads (summary.load_run finds them through outputs.json)."""
    inputs = {
        "outputs": f"{RES}/outputs.json",
        "config": f"{RES}/resolved_config.yaml",
        "classifier": f"{ICD}/classifier.json",
        "icd_curve": f"{ICD}/loss_curve.png",
        "pseudo_grid": f"{RES}/pseudo_masks/grid.png",
        "deeplab_pictures": f"{RES}/deeplab/grid.png",
        "deeplab": deeplab_summaries(),
    }
    if SCORE_PSEUDO_MASKS:
        inputs["pseudo_table"] = f"{RES}/pseudo_masks/table.csv"
    return inputs


def deeplab_dir(target):
    """The folder of a DeepLab target: pseudo (and the benchmark's saliency) in the experiment,
    the fully supervised one shared (DEEPLAB_FULL)."""
    return DEEPLAB_FULL if target == "full" else f"{RES}/deeplab/{target}"


def maps_inputs(wildcards):
    """extract_maps reads the trained model, and the feature cache of the training split
    when there is one (the passes it holds are not recomputed)."""
    inputs = {"model": f"{ICD}/model.pt"}
    if config["icd"]["feature_cache"] and wildcards.split == TRAIN_SPLIT:
        inputs["features"] = f"{FEATURES}/{TRAIN_SPLIT}.h5"
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
