"""`envkiln run`: start the operator (Kopf) against the current kubeconfig or in-cluster config."""

from __future__ import annotations

import argparse
import logging
import sys

from envkiln.core.settings import OperatorSettings, SettingsError


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = OperatorSettings.from_env()  # fail fast with a clear message, before connecting
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from envkiln.runtime.handlers import register

    namespaces = args.namespace or settings.namespaces
    kopf.run(
        registry=register(settings, kopf.OperatorRegistry()),
        memo=kopf.Memo(settings=settings),  # the one settings object; the startup handler builds on it
        standalone=args.standalone,
        priority=settings.resolved_peering_priority(),
        # An explicit peering name makes peering mandatory in Kopf; without one, Kopf uses
        # peering when its CRD exists and runs alone otherwise.
        peering_name=None if args.standalone else settings.peering_name,
        clusterwide=not namespaces,
        namespaces=namespaces or (),
        liveness_endpoint=settings.liveness_endpoint,
    )
    return 0
