"""A local SparkSession set up the way FIELD-NOTES measured it to work well on a small box."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JARS_LIST = REPO / ".cache/spark-jars/jars.txt"
FETCH = "deploy/spark/fetch.sh"


def kafka_jars() -> str:
    """Comma-separated paths of Spark's Kafka source and its dependencies (resolved by deploy/spark/fetch.sh)."""
    if not JARS_LIST.exists():
        raise FileNotFoundError(f"Spark's Kafka connector jars are missing ({JARS_LIST}); run `{FETCH}` "
                                "(make does this for you)")
    return JARS_LIST.read_text().strip()


def session(app: str = "logmesh-stream", master: str = "local[2]", driver_memory: str = "1g",  # type: ignore[no-untyped-def]
            shuffle_partitions: int = 2):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # else workers miss the venv's pyarrow
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.appName(app).master(master)
             .config("spark.jars", kafka_jars())
             .config("spark.driver.memory", driver_memory)
             .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])  # a cluster's executors run it too
             # on a cluster the application's UI and its REST API (/api/v1/applications/<id>/executors: tasks per
             # executor) are how one watches the job; local mode does without
             .config("spark.ui.enabled", str(not master.startswith("local")).lower())
             # frozen into the checkpoint at first start (options.shuffle_partitions); 2 matches the cores here (FIELD-NOTES)
             .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
             # the default manager forks chmod/readlink per checkpoint file: 115-145 ms -> 50-85 ms per batch
             .config("spark.sql.streaming.checkpointFileManagerClass",
                     "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             # C1 only: on 2 cores, C2's compiler threads compete with the first minutes of micro-batches;
             # interleaved at 2,000 lines/s, p99 3.3-4.1 s against 6.1-8.5 s with C2 (docs/benchmarks.md)
             .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    # Two WARNs an idle job repeats: "Current batch is falling behind" whenever a micro-batch outlasts the
    # trigger interval (a minimum here: an empty batch takes about the 250 ms trigger on this box, so about
    # once a second), and, every 5 min, state stores "lagging" on snapshot uploads while the maintenance
    # thread has made none in this run yet. Real trouble (failed batches, restarts) the job logs itself.
    jvm = spark.sparkContext._jvm
    for noisy in ("org.apache.spark.sql.execution.streaming.runtime.ProcessingTimeExecutor",
                  "org.apache.spark.sql.execution.streaming.state.StateStoreCoordinator"):
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(noisy, jvm.org.apache.logging.log4j.Level.ERROR)
    return spark
