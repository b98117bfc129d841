"""How an entry point names itself in ``--help`` and error messages."""

from __future__ import annotations

import sys

TOOL = "icd-pipeline"


def command_name(module: str) -> str:
    """``icd-pipeline <subcommand>`` when run through the project's tool (``cli`` sets
    ``sys.argv[0]`` so), else ``python -m <module>``, the way the Snakemake rules call it;
    never argparse's default, the bare file name (``predict.py``)."""
    if sys.argv and sys.argv[0].startswith(TOOL + " "):
        return sys.argv[0]
    return f"python -m {module}"
