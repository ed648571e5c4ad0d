"""MLflow: the tracking client (runs, tags, artifacts, retries), run names and notes, and the
checks that a tracking store is reachable. Imports config/ and core/ only; importing it loads no torch."""
