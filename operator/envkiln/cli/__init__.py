"""The `envkiln` command line: one module per command group."""
