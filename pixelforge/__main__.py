"""`python -m pixelforge ...`: the same command as `pixelforge ...`; what torchrun starts with
`torchrun --nproc_per_node=N -m pixelforge train ...` (docs/distributed.md)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
