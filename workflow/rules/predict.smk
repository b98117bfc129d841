# Stage "predict": segment a folder of new images with a trained DeepLab.
#   snakemake --cores 2 predict --config 'predict={images: /path/to/photos}'
# Outputs under results/<dataset>/<experiment>/predict/<model>/: masks/, overlays/, predictions.csv,
# skipped.csv (summary.json is the rule's declared output, so that Snakemake does not delete
# the CSV a rerun reads to skip the images already done).

PREDICT_MODEL = config["predict"]["model"]


rule predict_images:
    input:
        model=f"{deeplab_dir(PREDICT_MODEL)}/model.pt",
        images=predict_images,
    output:
        summary=f"{RES}/predict/{PREDICT_MODEL}/summary.json",
    log:
        f"{LOGS}/predict_{PREDICT_MODEL}.log",
    benchmark:
        f"{BENCH}/predict_{PREDICT_MODEL}.tsv"
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: all_threads()
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=1,
    params:
        out=lambda w, output: os.path.dirname(output.summary),
        cfg=stage_config("device", "deeplab", "pseudo_masks", "predict"),
        code=code_hash("stages/predict.py", "inference.py", "crf.py", "models"),
    shell:
        "python -m icd_pipeline.stages.predict --config-json {params.cfg:q} --model {input.model}"
        " --images {input.images:q} --out {params.out} > {log} 2>&1"


rule predict:
    input:
        rules.predict_images.output,
