"""`make demo` (`python -m demo` from the repo root): the main job on the embedded defaults. Not part of the
installed library: it drives the `logmesh` commands as a user would."""
