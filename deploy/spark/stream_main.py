"""Entry file for spark-submit and the Kubernetes spark-operator (deploy/k8s/spark/): the arguments are
those of `logmesh stream`. Spark runs a Python application from a file, not a console script."""
import sys

from logmesh.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
