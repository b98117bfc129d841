# Stage "deeplab": the segmentation network trained on the pseudo-masks ("pseudo", in the
# experiment's folder) and, with the same recipe and budget, on the ground-truth masks ("full",
# the upper bound; shared by the experiments whose DeepLab settings agree, DEEPLAB_FULL, and
# built only when every training image has a mask). A third target, "saliency" (ICD+saliency
# seeds), is built on request (the benchmark does).


wildcard_constraints:
    target="pseudo|saliency",


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
        cfg=lambda w: deeplab_train_config(w.get("target", "full")),
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


use rule train_deeplab as train_deeplab_full with:
    input:
        unpack(full_supervision_inputs),
    output:
        model=f"{DEEPLAB_FULL}/model.pt",
        metrics=f"{DEEPLAB_FULL}/metrics.csv",
        curve=report(
            f"{DEEPLAB_FULL}/loss_curve.png",
            caption="../report/deeplab_loss_curve.rst",
            category="3. DeepLab",
            labels={"trained on": "full"},
        ),
    log:
        f"{DATA_LOGS}/train_deeplab_{DEEPLAB_FULL_KEY}.log",
    benchmark:
        f"{DATA_BENCH}/train_deeplab_{DEEPLAB_FULL_KEY}.tsv"


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
        cfg=lambda w: deeplab_infer_config(w.get("target", "full")),
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


use rule infer_deeplab as infer_deeplab_full with:
    input:
        model=f"{DEEPLAB_FULL}/model.pt",
    output:
        predictions=directory(f"{DEEPLAB_FULL}/predictions"),
        per_class=f"{DEEPLAB_FULL}/per_class.csv",
        summary=f"{DEEPLAB_FULL}/summary.json",
    log:
        f"{DATA_LOGS}/infer_deeplab_{DEEPLAB_FULL_KEY}.log",
    benchmark:
        f"{DATA_BENCH}/infer_deeplab_{DEEPLAB_FULL_KEY}.tsv"


rule deeplab_pictures:
    input:
        unpack(deeplab_picture_inputs),
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
        full=lambda w, input: (
            f" --pred-full {input.full} --per-class-full {input.per_class_full}"
            if "full" in input.keys()
            else ""
        ),
    shell:
        "python -m icd_pipeline.stages.deeplab_pictures --data-root {params.root} --split {params.split}"
        " --pred-pseudo {input.pseudo} --per-class-pseudo {input.per_class_pseudo}{params.full}"
        " --out-grid {output.grid} --out-bars {output.bars} > {log} 2>&1"


rule deeplab:
    input:
        rules.deeplab_pictures.output,
        deeplab_summaries(),
