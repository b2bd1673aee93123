"""The `envkiln` command: offline tools for definitions, and the operator itself."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from envkiln import __version__
from envkiln.adapters.gitrefs import GitRefError, GitResolver, resolve_git_commit
from envkiln.core.decisions.network import UNRESTRICTED
from envkiln.core.definition import (
    DEFAULT_IMAGE_TEMPLATE,
    MissingContextContent,
    definition_document,
    definition_hash,
    image_name,
)
from envkiln.core.manifests import LoadedEnvironment, LoadProblem, load_environments
from envkiln.core.models import DEFAULT_CURATED_NAMESPACE, EnvironmentKind
from envkiln.core.names import ENVIRONMENTS, LABEL_ANONYMOUS
from envkiln.core.render import NothingToBuild, RenderError, render

DEFAULT_REGISTRY = "localhost:5000"
REPO_ROOT_CRDS = Path("crds")
CHART_CRDS = Path("charts/envkiln/crds")


def _print_problems(problems: list[LoadProblem]) -> None:
    for problem in problems:
        for line in problem.problems:
            print(f"error: {problem.source}: {line}", file=sys.stderr)


def _load(args: argparse.Namespace) -> tuple[list[LoadedEnvironment], int]:
    loaded, problems = load_environments(args.files, args.curated_namespace)
    _print_problems(problems)
    return loaded, (1 if problems else 0)


def _context_data(item: LoadedEnvironment, context_dir: str | None) -> dict[str, str | bytes] | None:
    data = item.context_data()
    if data is None and context_dir and item.environment.spec.build and item.environment.spec.build.config_map:
        root = Path(context_dir)
        data = {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}
    return data


def _hash(item: LoadedEnvironment, context_dir: str | None, resolver: GitResolver) -> tuple[str, str | None]:
    """(the definition hash, a git context's resolved commit): a branch or tag is asked of its remote,
    as the operator does."""
    commit = resolve_git_commit(item.environment.spec, resolver)
    return definition_hash(item.environment.spec, _context_data(item, context_dir), commit=commit), commit


def cmd_hash(args: argparse.Namespace) -> int:
    loaded, status = _load(args)
    resolver = GitResolver(policy=UNRESTRICTED)  # the user's own machine and network: no SSRF to guard
    for item in loaded:
        env = item.environment
        try:
            value, commit = _hash(item, args.context_dir, resolver)
        except (MissingContextContent, GitRefError) as error:
            print(f"error: {item.source}: {error}", file=sys.stderr)
            status = 1
            continue
        if env.spec.kind is EnvironmentKind.BRING_YOUR_OWN:
            image = env.spec.image
        else:
            image = image_name(value, args.registry, args.template, env.metadata.namespace or args.namespace)
        if args.json:
            print(json.dumps({"name": env.metadata.name, "version": env.spec.version, "hash": value,
                              "kind": env.spec.kind.value, "image": image,
                              **({"resolvedCommit": commit} if commit else {})}))
        elif args.explain:
            print(json.dumps(definition_document(env.spec, _context_data(item, args.context_dir), commit=commit),
                             indent=2))
        else:
            print(f"{env.metadata.name}\t{env.spec.version}\t{value}\t{image}")
    return status


def cmd_validate(args: argparse.Namespace) -> int:
    loaded, status = _load(args)
    for item in loaded:
        print(f"ok: {item.source} ({item.environment.spec.kind.value})")
    return status


def cmd_render(args: argparse.Namespace) -> int:
    loaded, status = _load(args)
    out_root = Path(args.output)
    resolver = GitResolver(policy=UNRESTRICTED)  # the user's own machine and network: no SSRF to guard
    for item in loaded:
        env = item.environment
        try:
            value, _ = _hash(item, args.context_dir, resolver)
            plan = render(env.spec, value)
        except NothingToBuild as error:
            print(f"{item.source}: {error}")
            continue
        except (MissingContextContent, RenderError, GitRefError) as error:
            print(f"error: {item.source}: {error}", file=sys.stderr)
            status = 1
            continue
        target = out_root / (env.metadata.name or value) if len(loaded) > 1 else out_root
        target.mkdir(parents=True, exist_ok=True)
        if plan.context is not None:
            (target / "context.json").write_text(json.dumps(plan.context.to_kube(), indent=2) + "\n")
        else:
            (target / "Dockerfile").write_text(plan.dockerfile)
            for file in plan.files:
                (target / file.path).write_text(file.content)
        print(f"{item.source}: wrote {target}")
    return status


def cmd_crds(args: argparse.Namespace) -> int:
    from envkiln.core.crdgen import write_crds

    directories = [Path(d) for d in args.output] if args.output else [REPO_ROOT_CRDS]
    if not args.output and CHART_CRDS.parent.is_dir():
        directories.append(CHART_CRDS)
    for path in write_crds(directories):
        print(f"wrote {path}")
    return 0


def _cluster_environments(namespace: str) -> list[dict[str, Any]]:
    from envkiln.adapters.kube import Kube
    from envkiln.adapters.kubeclient import api_client_from_kubeconfig

    return Kube(api_client_from_kubeconfig()).list(ENVIRONMENTS, namespace)


def _current_namespace(explicit: str | None) -> str:
    if explicit:
        return explicit
    from envkiln.adapters.kubeclient import kubeconfig_namespace

    return kubeconfig_namespace()


def cmd_image(args: argparse.Namespace) -> int:
    """The digest reference of NAME[:VERSION] (or of --hash), for scripts and Helm values."""
    from envkiln.core.workloads import WorkloadError, image_for_version

    namespace = _current_namespace(args.namespace)
    environments = _cluster_environments(namespace)
    if args.hash:
        matches = [e for e in environments if (e.get("status") or {}).get("hash", "").startswith(args.hash)]
        if not matches:
            print(f"error: no Environment with hash {args.hash} in namespace {namespace}", file=sys.stderr)
            return 1
        environment, version = matches[0], None
    else:
        name, _, version = args.reference.partition(":")
        found: dict[str, Any] | None = next((e for e in environments if e["metadata"]["name"] == name), None)
        if found is None:
            print(f"error: Environment {name!r} not found in namespace {namespace}", file=sys.stderr)
            return 1
        environment = found
    try:
        image = image_for_version(environment, version or None)
    except WorkloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if image is None:
        status = environment.get("status") or {}
        print(f"error: Environment {environment['metadata']['name']} is not Ready "
              f"(phase {status.get('phase', 'Pending')}): {status.get('message', '')}", file=sys.stderr)
        return 3
    print(image)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Environments in a namespace; anonymous ones only with --anonymous."""
    namespace = _current_namespace(args.namespace)
    rows = [("NAME", "VERSION", "HASH", "PHASE", "IMAGE REF")]
    for environment in sorted(_cluster_environments(namespace), key=lambda e: e["metadata"]["name"]):
        anonymous = (environment["metadata"].get("labels") or {}).get(LABEL_ANONYMOUS) == "true"
        if anonymous and not args.anonymous:
            continue
        status = environment.get("status") or {}
        rows.append((environment["metadata"]["name"], environment["spec"].get("version", "1"),
                     status.get("shortHash", ""), status.get("phase", ""), status.get("imageRef", "")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def cmd_import_azureml(args: argparse.Namespace) -> int:
    """Azure ML CLI v2 YAML -> Environment manifests; one stderr line per definition found."""
    from envkiln.core.azureml import ImportOptions, import_azureml, manifests_yaml

    options = ImportOptions(namespace=args.namespace, curated_namespace=args.curated_namespace,
                            max_configmap_bytes=args.max_configmap_bytes, tarball_url=args.tarball_url,
                            tarball_dir=Path(args.tarball_dir or (Path(args.output).parent if args.output else ".")),
                            root=Path(args.root) if args.root else None)
    outcomes, tarballs = import_azureml([Path(p) for p in args.paths], options)
    for outcome in outcomes:
        print(outcome.line(), file=sys.stderr)
    for path, content in tarballs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    text = manifests_yaml(outcomes)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("imported", "curated", "reference", "skipped", "error")}
    print("import azureml: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
    return 1 if counts["error"] else 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until NAME[:VERSION] is Ready (exit 0, its image reference on stdout); Failed: exit 1; --timeout: 3."""
    from envkiln.cli.follow import Cluster, parse_duration, wait

    try:
        timeout = parse_duration(args.timeout)
    except ValueError as error:
        print(f"error: --timeout: {error}", file=sys.stderr)
        return 2
    name, _, version = args.reference.partition(":")
    return wait(Cluster.from_kubeconfig(), _current_namespace(args.namespace), name, version or None, timeout,
                sys.stdout, sys.stderr)


def cmd_logs(args: argparse.Namespace) -> int:
    """The build pod's log of NAME[:VERSION]; -f follows the build to its end (exit 1 if it failed)."""
    from envkiln.cli.follow import Cluster, logs

    name, _, version = args.reference.partition(":")
    return logs(Cluster.from_kubeconfig(), _current_namespace(args.namespace), name, version or None, args.attempt,
                args.follow, sys.stdout, sys.stderr)


def cmd_lock(args: argparse.Namespace) -> int:
    """The resolved packages of NAME[:VERSION], as its build recorded them."""
    from envkiln.cli.follow import Cluster
    from envkiln.cli.reproduce import lock

    return lock(Cluster.from_kubeconfig(), _current_namespace(args.namespace), args.reference, sys.stdout,
                sys.stderr)


def cmd_diff(args: argparse.Namespace) -> int:
    """What changed between two environment versions (NAME[:VERSION]) or files (locks, manifests)."""
    from envkiln.cli.follow import Cluster
    from envkiln.cli.reproduce import diff

    return diff(Cluster.from_kubeconfig, _current_namespace(args.namespace) if not (
        Path(args.a).is_file() and Path(args.b).is_file()) else "default", args.a, args.b, sys.stdout, sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from envkiln.runtime.runner import run_operator

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="envkiln", description=__doc__)
    parser.add_argument("--version", action="version", version=f"envkiln {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_files(p: argparse.ArgumentParser) -> None:
        p.add_argument("files", nargs="+", help="YAML files with Environment manifests (several documents allowed)")
        p.add_argument("--curated-namespace", default=DEFAULT_CURATED_NAMESPACE,
                       help="namespace where reserved names (azureml-*, microsoft*) are allowed")
        p.add_argument("--context-dir", help="directory holding a ConfigMap build context's files")

    p = sub.add_parser("hash", help="print the definition hash and image name the operator would use")
    with_files(p)
    p.add_argument("--registry", default=DEFAULT_REGISTRY, help=f"registry host (default {DEFAULT_REGISTRY})")
    p.add_argument("--template", default=DEFAULT_IMAGE_TEMPLATE, help="image repository template")
    p.add_argument("--namespace", default="default",
                   help="namespace of manifests that name none (the image path holds it)")
    p.add_argument("--json", action="store_true", help="one JSON object per environment")
    p.add_argument("--explain", action="store_true", help="print the document that is hashed")
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser("validate", help="check manifests; exit 1 with field-named errors")
    with_files(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="write the Dockerfile and context files a build would use")
    with_files(p)
    p.add_argument("-o", "--output", default="envkiln-build", help="output directory")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("crds", help="regenerate the CRD manifests from the models")
    p.add_argument("-o", "--output", action="append", help="directory (repeatable; default crds/ and the chart's)")
    p.set_defaults(func=cmd_crds)

    p = sub.add_parser("image", help="print the image reference (digest) of NAME[:VERSION] from the cluster")
    p.add_argument("reference", nargs="?", help="Environment name, optionally :version")
    p.add_argument("--hash", help="find the Environment by (a prefix of) its definition hash instead")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("list", help="list Environments in the cluster (anonymous ones with --anonymous)")
    p.add_argument("-n", "--namespace")
    p.add_argument("--anonymous", action="store_true", help="include anonymous (inline) environments")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("import", help="turn other tools' definitions into Environment manifests")
    source = p.add_subparsers(dest="source", required=True)
    p = source.add_parser("azureml", help="Azure ML CLI v2 YAML: environments, jobs, components, deployments, "
                          "asset folders")
    p.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories (asset folders, trees)")
    p.add_argument("-o", "--output", help="write the manifests here (default: standard output)")
    p.add_argument("-n", "--namespace", help="namespace to put in the manifests (default: none)")
    p.add_argument("--curated-namespace", default=DEFAULT_CURATED_NAMESPACE,
                   help="namespace of envkiln's curated environments")
    p.add_argument("--tarball-url", help="https base URL where directory contexts too big or nested for a "
                   "ConfigMap will be served; the importer writes NAME-context.tar for you to upload there")
    p.add_argument("--tarball-dir", help="where to write those tarballs (default: beside -o, or .)")
    p.add_argument("--max-configmap-bytes", type=int, default=768 * 1024,
                   help="largest directory context put into a ConfigMap (default 786432)")
    p.add_argument("--root", help="the folder no path in the YAML may leave (e.g. a repository holding jobs/ and "
                   "components/); default: each PATH (a file's folder). Symbolic links are never followed")
    p.set_defaults(func=cmd_import_azureml)

    p = sub.add_parser("wait", help="wait until NAME[:VERSION] is Ready and print its image reference "
                       "(exit 1 when it failed, 3 on timeout)")
    p.add_argument("reference", help="Environment name, optionally :version")
    p.add_argument("--timeout", default="30m", help="give up after this long (e.g. 90s, 15m, 1h; default 30m)")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("logs", help="print the build pod's log of NAME[:VERSION] (-f: follow the build to its end)")
    p.add_argument("reference", help="Environment name, optionally :version")
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream the log until the build ends, attempt after attempt; exit 1 if it failed")
    p.add_argument("--attempt", type=int, help="this attempt (1 = the first) instead of the latest")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("lock", help="print the resolved packages (the lock) of NAME[:VERSION]; put it in "
                       "spec.lock to rebuild exactly these")
    p.add_argument("reference", help="Environment name, optionally :version")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=cmd_lock)

    p = sub.add_parser("diff", help="what changed between two environment versions or files: packages added, "
                       "removed and changed, base image digest, docker steps")
    p.add_argument("a", metavar="A", help="NAME[:VERSION] in the cluster, a lock file or an Environment manifest")
    p.add_argument("b", metavar="B", help="the same for the other side")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("run", help="run the operator against the current kubeconfig")
    p.add_argument("--namespace", action="append", help="namespace to watch (repeatable; default: all)")
    p.add_argument("--standalone", action="store_true", help="no peering with other replicas")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "image" and not (args.reference or args.hash):
        parser.error("image: give NAME[:VERSION] or --hash")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
