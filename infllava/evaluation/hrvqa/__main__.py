"""python -m infllava.evaluation.hrvqa OUT ... (the same as `infllava hrvqa OUT ...`)."""

import sys

from .writing import main

if __name__ == "__main__":
    sys.exit(main())
