"""The workflow's stages, one module per Snakemake rule (or user command), each a thin entry
point over the library modules beside this package (``models``, ``data``, ``misc``, ``losses``,
``seeds``, ``crf``, ...): ``def main(argv=None) -> int`` parses the arguments, reads the
config, calls the library and writes the outputs atomically; ``python -m
icd_pipeline.stages.<stage> --help`` describes each. Library modules never import a stage.
"""
