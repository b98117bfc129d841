# Stage "saliency": salient-object maps of the training split from an ONNX network
# (saliency.model; ISNet by default, fetched with `make saliency-model`), for the ICD seeds'
# background when seeds.background is saliency. Like the superpixels, the maps depend only on
# the data and the saliency section: shared by the experiments of a dataset, one folder per
# setting (saliency_key()).
SALIENCY = f"{DATA_RES}/saliency/{saliency_key()}"


rule saliency:
    input:
        unpack(saliency_inputs),
    output:
        maps=directory(f"{SALIENCY}/{{split}}"),
    log:
        f"{DATA_LOGS}/saliency_{saliency_key()}_{{split}}.log",
    benchmark:
        f"{DATA_BENCH}/saliency_{saliency_key()}_{{split}}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: all_threads()
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        cfg=stage_config("saliency"),
        code=code_hash("models/saliency.py", "stages/saliency.py"),
        root=lambda w: data_root(),
    shell:
        "python -m icd_pipeline.stages.saliency --config-json {params.cfg:q}"
        " --data-root {params.root} --split {wildcards.split} --out-dir {output.maps} > {log} 2>&1"


rule saliency_maps:
    input:
        f"{SALIENCY}/{TRAIN_SPLIT}",
