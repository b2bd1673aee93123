"""`envkiln run`: start the operator (Kopf) against the current kubeconfig or in-cluster config."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from envkiln.settings import OperatorSettings, SettingsError


def operator_identity() -> str:
    """This process among peers: host and pid (no password-database lookup)."""
    return f"envkiln@{socket.gethostname()}/{os.getpid()}"


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = OperatorSettings.from_env()  # fail fast with a clear message, before connecting
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from envkiln.handlers import register

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
        # Kopf's default identity asks the password database for the user's name, which fails for
        # a uid without an entry (any non-root image, OpenShift's random uids).
        identity=operator_identity(),  # type: ignore[arg-type]  # kopf's NewType of str, not exported
    )
    return 0
