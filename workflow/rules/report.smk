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
        dataset=DATASET,
        code=code_hash("report.py"),
        bench=BENCH,
        masks=pseudo_mask_folder(),
    shell:
        "python -m icd_pipeline.report --dataset {params.dataset} --deeplab-masks {params.masks}"
        " --pseudo-table {input.table} --deeplab-pseudo {input.deeplab_pseudo}"
        " --deeplab-full {input.deeplab_full} --benchmarks {params.bench}"
        " --classifier {input.classifier} --pseudo-per-class {input.pseudo_per_class}"
        " --deeplab-pseudo-per-class {input.deeplab_pseudo_per_class}"
        " --deeplab-full-per-class {input.deeplab_full_per_class}"
        " --out-md {output.md} --out-csv {output.csv} > {log} 2>&1"


rule report:
    input:
        rules.summarize.output,
