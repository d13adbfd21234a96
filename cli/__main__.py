"""`python -m logmesh.cli ...`, as the `logmesh` script."""
import sys

from logmesh.cli import main

sys.exit(main())
