"""``python -m icd_pipeline`` is the ``icd-pipeline`` tool (``cli``)."""

import sys

from .cli import main

sys.exit(main())
