"""`make bench` (`python -m bench [hops|onnx|kafka|vectors|e2e|profile|train|all]` from the repo root). Not
part of the installed library."""
