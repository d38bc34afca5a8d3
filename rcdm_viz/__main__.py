"""``python -m rcdm_viz``: the same as the ``rcdm-viz`` command."""

import sys

from rcdm_viz.cli import main

sys.exit(main())
