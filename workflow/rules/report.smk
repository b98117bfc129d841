# Stage "report": one summary (Markdown + CSV) for people who do not open the HTML report,
# and the final mIoU table for `snakemake --report`.


rule summarize:
    input:
        unpack(summary_inputs),
    output:
        md=f"{RES}/report/summary.md",
        csv=report(
            f"{RES}/report/summary.csv",
            caption="../report/summary.rst",
            category="4. Summary",
        ),
        html=f"{RES}/report.html",
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
        experiment=lambda w, output: os.path.dirname(output.html),
        code=code_hash("stages/summarize.py", "summary.py"),
    shell:
        "python -m icd_pipeline.stages.summarize --experiment {params.experiment} > {log} 2>&1"


rule report:
    input:
        rules.summarize.output,


# The experiment's resolved config (each leaf with its origin), beside its results: compare
# diffs these, and the file as --configfile reproduces the run (it starts with `base: paper`).
# outputs.json beside it says where the experiment's shared outputs are and which figures
# could not be computed, and why (summary.load_run reads the run through it).
localrules:
    resolved_config,
    compare,


rule resolved_config:
    output:
        config=f"{RES}/resolved_config.yaml",
        outputs=f"{RES}/outputs.json",
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
        outputs=json.dumps(run_outputs(), sort_keys=True, separators=(",", ":")),
        code=code_hash("stages/resolved_config.py"),
    shell:
        "python -m icd_pipeline.stages.resolved_config --config-json {params.cfg:q}"
        " --origins-json {params.origins:q} --out {output.config}"
        " --outputs-json {params.outputs:q} --out-outputs {output.outputs} > {log} 2>&1"


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
