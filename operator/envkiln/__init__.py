"""envkiln: Azure ML-style environments for Kubernetes.

Versioned environment definitions (base image, docker steps, conda/pip packages or a
user build context) are hashed, built into container images exactly once per distinct
definition, and handed to training workloads.
"""

# The one version source: pyproject.toml reads it (dynamic version), the chart's version and
# appVersion must equal it (scripts/release.py set-version writes all three).
__version__ = "0.1.0"

from envkiln.core.names import API_VERSION, GROUP, VERSION

__all__ = ["API_VERSION", "GROUP", "VERSION", "__version__"]
