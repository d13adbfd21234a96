import sys

from bench.pipeline import main

sys.exit(main())
