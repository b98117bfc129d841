# Stages "icd" (superpixels + classifier/ICD training) and "maps" (CAM/ICD logits to HDF5).


# Every output here depends on part of the settings only, and is shared by the experiments of
# a dataset that agree on that part: one folder per setting (common.smk: SUPERPIXELS,
# FEATURES, ICD, MAPS), with the key in the names of its log and benchmark files.


rule superpixels:
    input:
        manifest=f"{DATA_RES}/data/manifest.json",
    output:
        h5=f"{SUPERPIXELS}/{{split}}.h5",
    log:
        f"{DATA_LOGS}/superpixels_{superpixel_key()}_{{split}}.log",
    benchmark:
        f"{DATA_BENCH}/superpixels_{superpixel_key()}_{{split}}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: all_threads()
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        cfg=stage_config("superpixels", "device"),
        code=code_hash("stages/superpixels.py", "superpixels.py", "models/backbones.py"),
        root=lambda w: data_root(),
    shell:
        "python -m icd_pipeline.stages.superpixels --config-json {params.cfg:q}"
        " --data-root {params.root} --split {wildcards.split} --out {output.h5} > {log} 2>&1"


rule feature_cache:
    input:
        manifest=f"{DATA_RES}/data/manifest.json",
    output:
        h5=f"{FEATURES}/{{split}}.h5",
    log:
        f"{DATA_LOGS}/feature_cache_{FEATURES_KEY}_{{split}}.log",
    benchmark:
        f"{DATA_BENCH}/feature_cache_{FEATURES_KEY}_{{split}}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: all_threads()
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=1,
    params:
        cfg=feature_cache_config(),
        code=code_hash("stages/feature_cache.py", "feature_cache.py", "models"),
        root=lambda w: data_root(),
    shell:
        "python -m icd_pipeline.stages.feature_cache --config-json {params.cfg:q}"
        " --data-root {params.root} --split {wildcards.split} --out {output.h5} > {log} 2>&1"


rule train_icd:
    input:
        unpack(icd_training_inputs),
    output:
        model=f"{ICD}/model.pt",
        metrics=report(
            f"{ICD}/metrics.csv",
            caption="../report/icd_metrics.rst",
            category="1. ICD training",
        ),
        curve=report(
            f"{ICD}/loss_curve.png",
            caption="../report/icd_loss_curve.rst",
            category="1. ICD training",
        ),
        classifier=f"{ICD}/classifier.json",
    log:
        f"{DATA_LOGS}/train_icd_{ICD_KEY}.log",
    benchmark:
        f"{DATA_BENCH}/train_icd_{ICD_KEY}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: all_threads()
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    params:
        out=lambda w, output: os.path.dirname(output.model),
        split=TRAIN_SPLIT,
        eval_split=EVAL_SPLIT,
        cache=cache_arg,
        cfg=stage_config("seed", "device", "icd"),
        code=code_hash(
            "stages/train_icd.py",
            "models",
            "losses.py",
            "evaluate.py",
            "viz.py",
            "superpixels.py",
            "feature_cache.py",
        ),
        root=lambda w: data_root(),
    shell:
        "python -m icd_pipeline.misc.launch --nproc {resources.gpu} icd_pipeline.stages.train_icd --config-json {params.cfg:q}"
        " --data-root {params.root} --split {params.split} --eval-split {params.eval_split}"
        " --superpixels {input.superpixels}{params.cache} --out-dir {params.out} > {log} 2>&1"


rule extract_maps:
    input:
        unpack(maps_inputs),
    output:
        h5=f"{MAPS}/{{split}}.h5",
    log:
        f"{DATA_LOGS}/extract_maps_{MAPS_KEY}_{{split}}.log",
    benchmark:
        f"{DATA_BENCH}/extract_maps_{MAPS_KEY}_{{split}}.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: all_threads()
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1,
    params:
        cfg=stage_config("device", "maps"),
        code=code_hash(
            "stages/extract_maps.py", "maps_io.py", "models", "feature_cache.py"
        ),
        root=lambda w: data_root(),
        cache=cache_arg,
    shell:
        "python -m icd_pipeline.stages.extract_maps --config-json {params.cfg:q}"
        " --data-root {params.root} --split {wildcards.split}"
        " --checkpoint {input.model}{params.cache} --out {output.h5} > {log} 2>&1"


rule icd:
    input:
        rules.train_icd.output,


rule maps:
    input:
        f"{MAPS}/{TRAIN_SPLIT}.h5",
