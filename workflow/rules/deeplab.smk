# Stage "deeplab": the segmentation network trained on ICD+CRF pseudo-masks ("pseudo") and,
# with the same recipe and budget, on the ground-truth masks ("full", the upper bound).
# A third target, "saliency" (ICD+saliency seeds), is built on request (the benchmark does).

DEEPLAB_TARGETS = ["pseudo", "full"]


wildcard_constraints:
    target="pseudo|full|saliency",


rule train_deeplab:
    input:
        unpack(deeplab_masks),
    output:
        model=f"{RES}/deeplab/{{target}}/model.pt",
        metrics=f"{RES}/deeplab/{{target}}/metrics.csv",
        curve=report(
            f"{RES}/deeplab/{{target}}/loss_curve.png",
            caption="../report/deeplab_loss_curve.rst",
            category="3. DeepLab",
            labels={"trained on": "{target}"},
        ),
    log:
        f"{LOGS}/train_deeplab_{{target}}.log",
    benchmark:
        f"{BENCH}/train_deeplab_{{target}}.tsv"
    priority: DEEPLAB_TRAINING_PRIORITY
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: deeplab_threads()
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    params:
        out=lambda w, output: os.path.dirname(output.model),
        split=TRAIN_SPLIT,
        cfg=stage_config("seed", "device", "deeplab"),
        code=code_hash(
            "stages/train_deeplab.py", "models", "viz.py", "feature_cache.py"
        ),
        root=lambda w: data_root(),
        mask_dir=mask_dir_arg,
        cache=cache_arg,
    shell:
        "python -m icd_pipeline.misc.launch --nproc {resources.gpu} icd_pipeline.stages.train_deeplab --config-json {params.cfg:q}"
        " --data-root {params.root} --split {params.split} {params.mask_dir}{params.cache}"
        " --out-dir {params.out} > {log} 2>&1"


rule infer_deeplab:
    input:
        model=f"{RES}/deeplab/{{target}}/model.pt",
    output:
        predictions=directory(f"{RES}/deeplab/{{target}}/predictions"),
        per_class=f"{RES}/deeplab/{{target}}/per_class.csv",
        summary=f"{RES}/deeplab/{{target}}/summary.json",
    log:
        f"{LOGS}/infer_deeplab_{{target}}.log",
    benchmark:
        f"{BENCH}/infer_deeplab_{{target}}.tsv"
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: deeplab_threads()
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=1,
    params:
        split=EVAL_SPLIT,
        cfg=stage_config("device", "deeplab", "pseudo_masks"),
        code=code_hash(
            "stages/infer_deeplab.py",
            "inference.py",
            "evaluate.py",
            "crf.py",
            "models",
        ),
        root=lambda w: data_root(),
    shell:
        "python -m icd_pipeline.stages.infer_deeplab --config-json {params.cfg:q}"
        " --data-root {params.root} --split {params.split} --checkpoint {input.model}"
        " --pred-dir {output.predictions} --out-csv {output.per_class}"
        " --out-json {output.summary} > {log} 2>&1"


rule deeplab_pictures:
    input:
        pseudo=f"{RES}/deeplab/pseudo/predictions",
        full=f"{RES}/deeplab/full/predictions",
        per_class_pseudo=f"{RES}/deeplab/pseudo/per_class.csv",
        per_class_full=f"{RES}/deeplab/full/per_class.csv",
    output:
        grid=report(
            f"{RES}/deeplab/grid.png",
            caption="../report/deeplab_grid.rst",
            category="3. DeepLab",
        ),
        bars=report(
            f"{RES}/deeplab/per_class_iou.png",
            caption="../report/deeplab_bars.rst",
            category="3. DeepLab",
        ),
    log:
        f"{LOGS}/deeplab_pictures.log",
    benchmark:
        f"{BENCH}/deeplab_pictures.tsv"
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        split=EVAL_SPLIT,
        code=code_hash("stages/deeplab_pictures.py", "viz.py"),
        root=lambda w: data_root(),
    shell:
        "python -m icd_pipeline.stages.deeplab_pictures --data-root {params.root} --split {params.split}"
        " --pred-pseudo {input.pseudo} --pred-full {input.full}"
        " --per-class-pseudo {input.per_class_pseudo} --per-class-full {input.per_class_full}"
        " --out-grid {output.grid} --out-bars {output.bars} > {log} 2>&1"


rule deeplab:
    input:
        expand(f"{RES}/deeplab/{{target}}/summary.json", target=DEEPLAB_TARGETS),
        rules.deeplab_pictures.output,
