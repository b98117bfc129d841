# icd-pipeline: image labels -> ICD pseudo-masks -> DeepLab -> honest mIoU.
#
#   snakemake --cores 2 all                      the whole DAG on config.yaml (embedded dataset)
#   snakemake --cores 2 pseudo_masks             one stage and what it needs
#   snakemake --cores 2 all --configfile workflow/presets/voc2012.yaml
#
# Stages: data -> superpixels -> icd -> maps -> (saliency) -> pseudo_masks -> deeplab -> report.
import os

from icd_pipeline.config import load_yaml

# Snakemake reports a YAML syntax error as "not valid JSON or YAML", with no file or line: read
# the default config first, so that it stops with FILE:LINE:COLUMN. (--configfile files are read
# before this file runs: `python -m icd_pipeline.run_workflow` checks those; README.)
load_yaml(os.path.join(workflow.basedir, "config.yaml"))


# The default config sits beside this file, so `--directory` and `--snakefile` work from anywhere;
# --configfile / --config override it.
configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/icd.smk"
include: "workflow/rules/saliency.smk"
include: "workflow/rules/pseudo_masks.smk"
include: "workflow/rules/deeplab.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"


rule all:
    default_target: True
    input:
        rules.report.input,
