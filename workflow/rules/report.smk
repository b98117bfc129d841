# Stage "report": one summary (Markdown + CSV) for people who do not open the HTML report,
# and the final mIoU table for `snakemake --report`.


rule summarize:
    input:
        table=rules.eval_pseudo_masks.output.table,
        deeplab_pseudo=f"{RES}/deeplab/pseudo/summary.json",
        deeplab_full=f"{RES}/deeplab/full/summary.json",
        classifier=f"{RES}/icd/classifier.json",
        pseudo_per_class=rules.eval_pseudo_masks.output.per_class,
        deeplab_pseudo_per_class=f"{RES}/deeplab/pseudo/per_class.csv",
        deeplab_full_per_class=f"{RES}/deeplab/full/per_class.csv",
        pictures=rules.deeplab_pictures.output,
        grid=rules.pseudo_mask_pictures.output.grid,
    output:
        md=f"{RES}/report/summary.md",
        csv=report(
            f"{RES}/report/summary.csv",
            caption="../report/summary.rst",
            category="4. Summary",
        ),
    log:
        f"{LOGS}/summarize.log",
    benchmark:
        f"{BENCH}/summarize.tsv"
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        dataset=f"{DATASET}/{EXPERIMENT}",
        code=code_hash("stages/summarize.py", "summary.py"),
        bench=[DATA_BENCH, BENCH],
        masks=pseudo_mask_folder(),
    shell:
        "python -m icd_pipeline.stages.summarize --dataset {params.dataset} --deeplab-masks {params.masks}"
        " --pseudo-table {input.table} --deeplab-pseudo {input.deeplab_pseudo}"
        " --deeplab-full {input.deeplab_full} --benchmarks {params.bench}"
        " --classifier {input.classifier} --pseudo-per-class {input.pseudo_per_class}"
        " --deeplab-pseudo-per-class {input.deeplab_pseudo_per_class}"
        " --deeplab-full-per-class {input.deeplab_full_per_class}"
        " --out-md {output.md} --out-csv {output.csv} > {log} 2>&1"


rule report:
    input:
        rules.summarize.output,
        f"{RES}/resolved_config.yaml",


# The experiment's resolved config (each leaf with its origin), beside its results: compare
# diffs these, and the file as --configfile reproduces the run (it starts with `base: paper`).
localrules:
    resolved_config,
    compare,


rule resolved_config:
    output:
        f"{RES}/resolved_config.yaml",
    log:
        f"{LOGS}/resolved_config.log",
    benchmark:
        f"{BENCH}/resolved_config.tsv"
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        cfg=json.dumps(config, separators=(",", ":")),
        origins=json.dumps(CONFIG_ORIGINS, sort_keys=True, separators=(",", ":")),
        code=code_hash("stages/resolved_config.py"),
    shell:
        "python -m icd_pipeline.stages.resolved_config --config-json {params.cfg:q}"
        " --origins-json {params.origins:q} --out {output} > {log} 2>&1"


rule compare:
    input:
        summaries=[f"{d}/report/summary.csv" for d in finished_experiments()],
        configs=[f"{d}/resolved_config.yaml" for d in finished_experiments()],
    output:
        csv=f"{DATA_RES}/compare/compare.csv",
        md=f"{DATA_RES}/compare/compare.md",
        png=f"{DATA_RES}/compare/compare.png",
    log:
        f"{DATA_LOGS}/compare.log",
    benchmark:
        f"{DATA_BENCH}/compare.tsv"
    conda:
        "../../envs/icd-pipeline.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        results=lambda w, output: os.path.dirname(os.path.dirname(output.csv)),
        out=lambda w, output: os.path.dirname(output.csv),
        code=code_hash("stages/compare.py", "summary.py", "viz.py"),
    shell:
        "python -m icd_pipeline.stages.compare --results {params.results} --out-dir {params.out} > {log} 2>&1"
