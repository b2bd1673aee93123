"""The operator's runtime: Kopf registration, the runner, indexes and the periodic resync."""
