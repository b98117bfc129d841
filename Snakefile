# icd-pipeline: image labels -> ICD pseudo-masks -> DeepLab -> honest mIoU.
#
#   snakemake --cores 2 all                      the whole DAG on config.yaml (embedded dataset)
#   snakemake --cores 2 pseudo_masks             one stage and what it needs
#   snakemake --cores 2 all --configfile workflow/presets/voc2012.yaml
#
# Stages: data -> superpixels -> icd -> maps -> pseudo_masks -> deeplab -> report.
import os


# The default config sits beside this file, so `--directory` and `--snakefile` work from anywhere;
# --configfile / --config override it.
configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/icd.smk"
include: "workflow/rules/pseudo_masks.smk"
include: "workflow/rules/deeplab.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"


rule all:
    default_target: True
    input:
        rules.report.input,
