"""What every logmesh server and the Spark job share: the gRPC server runtime (admission, limits,
reflection, readiness replies), server security, byte-bounded caches and JSON logging.

Nothing here imports a server (embedder/, scorer/) or the job (streaming/); clients/ never imports it.
"""
