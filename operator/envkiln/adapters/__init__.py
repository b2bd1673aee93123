"""Adapters to the outside: the Kubernetes API (Kube), registries, builders, git, certificates, metrics."""
