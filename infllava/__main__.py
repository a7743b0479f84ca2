"""`python -m infllava ...` (used by `accelerate launch -m infllava train ...` and torchrun)."""

import sys

from infllava_cli import main

sys.exit(main())
