"""`python -m infllava_cli ...`: the `infllava` command without importing the library first."""

import sys

from . import main

sys.exit(main())
