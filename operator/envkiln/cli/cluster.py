"""The commands that read the cluster: image, list, wait, logs, lock, diff (when a side is NAME[:VERSION]).

They use the user's kubeconfig as kubectl does (`--kubeconfig`, `--context`, `-n`; the context's
namespace by default) and only read.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from envkiln.adapters.kube import ApiError
from envkiln.cli.errors import NotFound, NotReady, UsageError
from envkiln.cli.follow import parse_duration
from envkiln.cli.output import dump, dump_items, resource_name, table
from envkiln.cli.session import Session, process_started
from envkiln.core.names import ENVIRONMENTS, LABEL_ANONYMOUS


def _environments(session: Session, namespace: str | None) -> list[dict[str, Any]]:
    """Environments in `namespace` (None: every namespace)."""
    kube = session.cluster().kube
    try:
        return kube.list_in(ENVIRONMENTS, [namespace] if namespace else None)
    except ApiError as error:  # a 404 on a list: the API has no Environments at all
        if error.status == 404:
            raise NotFound(f"the API server {session.server} has no envkiln.dev Environments: install the CRDs "
                           "(kubectl apply -f crds/, or the Helm chart)") from None
        raise


def image_verdict(environment: dict[str, Any], version: str | None) -> tuple[str | None, NotFound | NotReady | None]:
    """(the image reference of NAME[:VERSION], or why there is none): a version it never had is not
    found; one not built yet (or never built) is not Ready."""
    from envkiln.core.workloads import WorkloadError, image_for_version

    name = environment["metadata"]["name"]
    spec, status = environment.get("spec") or {}, environment.get("status") or {}
    if version and version != spec.get("version", "1") and not any(
            r.get("version") == version for r in status.get("versions") or []):
        known = sorted({str(r.get("version")) for r in status.get("versions") or []} | {str(spec.get("version", "1"))})
        return None, NotFound(f"Environment {name} has no version {version!r}; known versions: {', '.join(known)}")
    try:
        image = image_for_version(environment, version or None)
    except WorkloadError as error:
        return None, NotReady(str(error))
    if image is None:
        return None, NotReady(f"Environment {name} is not Ready (phase {status.get('phase', 'Pending')}): "
                              f"{status.get('message', '')}")
    return image, None


def cmd_image(args: argparse.Namespace) -> int:
    """The digest reference of NAME[:VERSION] (or of --hash), for scripts and Helm values."""
    if bool(args.reference) == bool(args.hash):
        raise UsageError("image: give NAME[:VERSION] or --hash, not both" if args.reference else
                         "image: give NAME[:VERSION] or --hash")
    session = Session.from_args(args)
    namespace = session.namespace
    version: str | None = None
    if args.hash:
        matches = [e for e in _environments(session, namespace)
                   if (e.get("status") or {}).get("hash", "").startswith(args.hash)]
        if not matches:
            raise NotFound(f"no Environment with hash {args.hash} in namespace {namespace}")
        environment = matches[0]
    else:
        name, _, version = args.reference.partition(":")
        found = session.cluster().environment(namespace, name)
        if found is None:
            raise NotFound(f"Environment {name!r} not found in namespace {namespace}")
        environment = found
    image, problem = image_verdict(environment, version or None)
    if problem is not None:
        raise problem
    if args.output:
        sys.stdout.write(dump({"name": environment["metadata"]["name"], "namespace": namespace,
                               "version": version or (environment.get("spec") or {}).get("version", "1"),
                               "imageRef": image}, args.output))
    else:
        print(image)
    return 0


def list_rows(environments: list[dict[str, Any]], all_namespaces: bool) -> list[tuple[str, ...]]:
    """The table of `envkiln list` (-A: a NAMESPACE column first)."""
    header = ("NAME", "VERSION", "HASH", "PHASE", "IMAGE REF")
    rows: list[tuple[str, ...]] = [("NAMESPACE", *header) if all_namespaces else header]
    for environment in environments:
        status = environment.get("status") or {}
        row = (environment["metadata"]["name"], str((environment.get("spec") or {}).get("version", "1")),
               str(status.get("shortHash", "")), str(status.get("phase", "")), str(status.get("imageRef", "")))
        rows.append((str(environment["metadata"].get("namespace", "")), *row) if all_namespaces else row)
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    """Environments in a namespace (-A: in all); anonymous ones only with --anonymous."""
    session = Session.from_args(args)
    namespace = None if args.all_namespaces else session.namespace
    environments = sorted(
        (e for e in _environments(session, namespace)
         if args.anonymous or (e["metadata"].get("labels") or {}).get(LABEL_ANONYMOUS) != "true"),
        key=lambda e: (e["metadata"].get("namespace", ""), e["metadata"]["name"]))
    if args.output == "name":
        sys.stdout.write("".join(resource_name(e) + "\n" for e in environments))
    elif args.output:
        sys.stdout.write(dump_items(environments, args.output, single=False))
    elif not environments:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"No Environments in {where}.", file=sys.stderr)
    else:
        sys.stdout.write(table(list_rows(environments, namespace is None)))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until NAME[:VERSION] is Ready (exit 0, its image reference on stdout); Failed: exit 1;
    --timeout: 3 (4 when the API server could not be reached)."""
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as error:
        raise UsageError(f"--timeout: {error}") from None
    from envkiln.cli.follow import wait

    # From the process's start when run as a command (as `timeout 3s envkiln wait` would count), else from now.
    deadline = (process_started() if getattr(args, "from_process_start", False) else time.monotonic()) + timeout
    session = Session.from_args(args)
    cluster = session.cluster(deadline)  # every request ends by the deadline
    name, _, version = args.reference.partition(":")
    return wait(cluster, session.namespace, name, version or None, timeout, sys.stdout, sys.stderr,
                deadline=deadline, output=args.output)


def cmd_logs(args: argparse.Namespace) -> int:
    """The build pod's log of NAME[:VERSION]; -f follows the build to its end (exit 1 if it failed)."""
    from envkiln.cli.follow import logs

    session = Session.from_args(args)
    name, _, version = args.reference.partition(":")
    return logs(session.cluster(), session.namespace, name, version or None, args.attempt, args.follow,
                sys.stdout, sys.stderr)


def cmd_lock(args: argparse.Namespace) -> int:
    """The resolved packages of NAME[:VERSION], as its build recorded them."""
    from envkiln.cli.reproduce import lock

    session = Session.from_args(args)
    return lock(session.cluster(), session.namespace, args.reference, sys.stdout, sys.stderr, args.output)


def cmd_diff(args: argparse.Namespace) -> int:
    """What changed between two environment versions (NAME[:VERSION]) or files (locks, manifests, `-`)."""
    from envkiln.cli.reproduce import diff

    session = Session.from_args(args)
    return diff(session.cluster, lambda: session.namespace, args.a, args.b, sys.stdout, sys.stderr, args.output)
