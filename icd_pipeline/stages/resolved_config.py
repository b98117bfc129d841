"""Stage ``resolved_config``: write an experiment's resolved configuration (each leaf with its
origin as a comment) beside its results. The file starts with ``base: paper``, so as a
``--configfile`` it reproduces the run; ``compare`` diffs these files.

    python -m icd_pipeline.stages.resolved_config --config-json JSON --origins-json JSON --out FILE \
        [--outputs-json JSON --out-outputs outputs.json]

With ``--outputs-json``, also the experiment's ``outputs.json`` (``summary.load_run``): where its
shared outputs are, and which figures it cannot compute and why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError, format_resolved
from ..misc.commands import command_name
from ..misc.io import atomic_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command_name("icd_pipeline.stages.resolved_config"),
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-json", required=True, help="the resolved config as JSON")
    parser.add_argument("--origins-json", required=True, help="{leaf: origin} as JSON")
    parser.add_argument("--out", required=True)
    parser.add_argument("--outputs-json", help="the experiment's outputs.json content, as JSON")
    parser.add_argument("--out-outputs", help="where to write it")
    args = parser.parse_args(argv)
    try:
        if (args.outputs_json is None) != (args.out_outputs is None):
            raise ValueError("--outputs-json and --out-outputs go together")
        config, origins = json.loads(args.config_json), json.loads(args.origins_json)
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(format_resolved(config, origins))
        if args.out_outputs:
            outputs = json.loads(args.outputs_json)
            with atomic_path(args.out_outputs) as tmp:
                Path(tmp).write_text(json.dumps(outputs, indent=2, sort_keys=True) + "\n")
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
