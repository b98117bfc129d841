"""The workflow's stages, one module per Snakemake rule (or user command), each a thin entry
point over the library modules beside this package (``models``, ``data``, ``misc``, ``losses``,
``seeds``, ``crf``, ...): ``def main(argv=None) -> int`` parses the arguments, reads the
config, calls the library and writes the outputs atomically; ``python -m
icd_pipeline.stages.<stage> --help`` describes each. Library modules never import a stage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable


def dataset_parser(module: str, description: str,
                   out_help: str = "output folder (VOC layout + manifest.json)") -> argparse.ArgumentParser:
    """The arguments every dataset-writing stage takes: the config, ``--out`` and ``--no-progress``."""
    from ..config import add_config_args
    from ..misc.commands import command_name

    parser = argparse.ArgumentParser(prog=command_name(module), description=description)
    add_config_args(parser)
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def write_dataset(args: argparse.Namespace, build: Callable[[dict], dict], summary: Callable[[dict], str],
                  log) -> int:
    """Run ``build(config)`` (which writes the dataset and returns its manifest); a bad input is
    one ``error:`` line and exit 1, success logs ``summary(manifest)``."""
    from ..config import ConfigError, config_from_args
    from ..data.voc import DataError

    try:
        manifest = build(config_from_args(args))
    except (DataError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("%s", summary(manifest))
    return 0


def splits_summary(manifest: dict) -> str:
    return f"manifest: {json.dumps(manifest['splits'])}"
