# Stage "pseudo_masks": ICD seeds and the CAM baseline, each with and without dense CRF,
# their evaluation against ground truth on the training split, and a picture grid.


rule make_pseudo_masks:
    input:
        unpack(pseudo_mask_inputs),
    output:
        masks=directory(f"{RES}/pseudo_masks/masks"),
    log:
        f"{LOGS}/make_pseudo_masks.log",
    benchmark:
        f"{BENCH}/make_pseudo_masks.tsv"
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: all_threads()
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        split=TRAIN_SPLIT,
        cfg=stage_config("pseudo_masks", "seeds"),
        code=code_hash(
            "stages/make_pseudo_masks.py", "seeds.py", "crf.py", "maps_io.py"
        ),
        root=lambda w: data_root(),
        saliency=saliency_arg,
    shell:
        "python -m icd_pipeline.stages.make_pseudo_masks --config-json {params.cfg:q}"
        " --data-root {params.root} --split {params.split}{params.saliency}"
        " --maps {input.maps} --out-dir {output.masks} > {log} 2>&1"


rule eval_pseudo_masks:
    input:
        masks=rules.make_pseudo_masks.output.masks,
    output:
        table=report(
            f"{RES}/pseudo_masks/table.csv",
            caption="../report/pseudo_mask_table.rst",
            category="2. Pseudo-masks",
        ),
        per_class=f"{RES}/pseudo_masks/per_class.csv",
    log:
        f"{LOGS}/eval_pseudo_masks.log",
    benchmark:
        f"{BENCH}/eval_pseudo_masks.tsv"
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        split=TRAIN_SPLIT,
        code=code_hash("stages/eval_pseudo_masks.py", "evaluate.py"),
        root=lambda w: data_root(),
    shell:
        "python -m icd_pipeline.stages.eval_pseudo_masks --data-root {params.root} --split {params.split}"
        " --masks-dir {input.masks} --out-table {output.table}"
        " --out-per-class {output.per_class} > {log} 2>&1"


rule pseudo_mask_pictures:
    input:
        maps=f"{MAPS}/{TRAIN_SPLIT}.h5",
        masks=rules.make_pseudo_masks.output.masks,
    output:
        grid=report(
            f"{RES}/pseudo_masks/grid.png",
            caption="../report/pseudo_mask_grid.rst",
            category="2. Pseudo-masks",
        ),
    log:
        f"{LOGS}/pseudo_mask_pictures.log",
    benchmark:
        f"{BENCH}/pseudo_mask_pictures.tsv"
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        split=TRAIN_SPLIT,
        code=code_hash("stages/pseudo_mask_pictures.py", "maps_io.py", "viz.py"),
        root=lambda w: data_root(),
    shell:
        "python -m icd_pipeline.stages.pseudo_mask_pictures --data-root {params.root} --split {params.split}"
        " --maps {input.maps} --masks-dir {input.masks} --out {output.grid} > {log} 2>&1"


rule pseudo_masks:
    input:
        rules.pseudo_mask_pictures.output,
        rules.eval_pseudo_masks.output if SCORE_PSEUDO_MASKS else [],
