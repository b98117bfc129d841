# Stage "data": the dataset in VOC layout, ending with results/<dataset>/data/manifest.json,
# shared by every experiment of the dataset (its settings: dataset, and seed for the generator).
# dataset.source picks one of: the embedded generator, VOC 2012 + SBD download, COCO 2014
# download, a user folder (checked, then seen through a VOC-layout view of links: data/folder.py).

SOURCE = config["dataset"]["source"]

if SOURCE == "synthetic":

    rule make_embedded_dataset:
        output:
            manifest=f"{DATA_RES}/data/manifest.json",
        log:
            f"{DATA_LOGS}/make_embedded_dataset.log",
        benchmark:
            f"{DATA_BENCH}/make_embedded_dataset.tsv"
        conda:
            "../../envs/icd-pipeline.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            out=lambda w, output: os.path.dirname(output.manifest),
            cfg=stage_config("seed", "dataset"),
            code=code_hash("stages/make_embedded_dataset.py", "data/synthetic.py"),
        shell:
            "python -m icd_pipeline.stages.make_embedded_dataset --config-json {params.cfg:q}"
            " --out {params.out} > {log} 2>&1"

elif SOURCE == "voc2012":

    localrules:
        download_voc,

    rule download_voc:
        output:
            done=f"{DATA_RES}/downloads/extracted.json",
        log:
            f"{DATA_LOGS}/download_voc.log",
        benchmark:
            f"{DATA_BENCH}/download_voc.tsv"
        conda:
            "../../envs/icd-pipeline.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=240,
        params:
            out=lambda w, output: os.path.dirname(output.done),
            cfg=stage_config("dataset"),
            code=code_hash("stages/download.py", "data/download.py"),
        shell:
            "python -m icd_pipeline.stages.download --config-json {params.cfg:q}"
            " --out-dir {params.out} > {log} 2>&1"

    rule prepare_voc:
        input:
            done=rules.download_voc.output.done,
        output:
            manifest=f"{DATA_RES}/data/manifest.json",
        log:
            f"{DATA_LOGS}/prepare_voc.log",
        benchmark:
            f"{DATA_BENCH}/prepare_voc.tsv"
        conda:
            "../../envs/icd-pipeline.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
        params:
            downloads=lambda w, input: os.path.dirname(input.done),
            out=lambda w, output: os.path.dirname(output.manifest),
            cfg=stage_config("dataset"),
            code=code_hash("stages/prepare_voc.py", "data/prepare.py"),
        shell:
            "python -m icd_pipeline.stages.prepare_voc --config-json {params.cfg:q}"
            " --downloads {params.downloads} --out {params.out} > {log} 2>&1"

elif SOURCE == "coco2014":

    localrules:
        download_coco,

    rule download_coco:
        output:
            done=f"{DATA_RES}/downloads/extracted.json",
        log:
            f"{DATA_LOGS}/download_coco.log",
        benchmark:
            f"{DATA_BENCH}/download_coco.tsv"
        conda:
            "../../envs/icd-pipeline.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=720,
        params:
            out=lambda w, output: os.path.dirname(output.done),
            cfg=stage_config("dataset"),
            code=code_hash("stages/download.py", "data/download.py"),
        shell:
            "python -m icd_pipeline.stages.download --config-json {params.cfg:q}"
            " --out-dir {params.out} > {log} 2>&1"

    # the whole instances JSON is loaded (a few GB for train2014); images then stream
    rule prepare_coco:
        input:
            done=rules.download_coco.output.done,
        output:
            manifest=f"{DATA_RES}/data/manifest.json",
        log:
            f"{DATA_LOGS}/prepare_coco.log",
        benchmark:
            f"{DATA_BENCH}/prepare_coco.tsv"
        conda:
            "../../envs/icd-pipeline.yaml"
        threads: 8
        resources:
            mem_mb=16000,
            runtime=240,
        params:
            downloads=lambda w, input: os.path.dirname(input.done),
            out=lambda w, output: os.path.dirname(output.manifest),
            cfg=stage_config("dataset"),
            code=code_hash("stages/prepare_coco.py", "data/prepare.py", "data/coco.py"),
        shell:
            "python -m icd_pipeline.stages.prepare_coco --config-json {params.cfg:q}"
            " --downloads {params.downloads} --out {params.out} --workers {threads}"
            " > {log} 2>&1"

else:

    from icd_pipeline.data.folder import watched_files

    rule validate_dataset:
        input:
            # an edit of the folder's label file or split lists rebuilds the view
            watched=lambda w: watched_files(config["dataset"]),
        output:
            manifest=f"{DATA_RES}/data/manifest.json",
        log:
            f"{DATA_LOGS}/validate_dataset.log",
        benchmark:
            f"{DATA_BENCH}/validate_dataset.tsv"
        conda:
            "../../envs/icd-pipeline.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            out=lambda w, output: os.path.dirname(output.manifest),
            cfg=stage_config("dataset"),
            code=code_hash("stages/validate_dataset.py", "data/folder.py"),
        shell:
            "python -m icd_pipeline.stages.validate_dataset --config-json {params.cfg:q}"
            " --out {params.out} > {log} 2>&1"


rule data:
    input:
        f"{DATA_RES}/data/manifest.json",
