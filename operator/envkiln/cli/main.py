"""The `envkiln` command (and `kubectl envkiln`): offline tools for definitions, the cluster's
environments as kubectl shows objects, and the operator itself."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from envkiln import __version__
from envkiln.cli.errors import CliError, Exit, UsageError, exit_codes_text, exit_for_status

DEFAULT_REGISTRY = "localhost:5000"
DEFAULT_TEMPLATE = "{registry}/envkiln/{namespace}/env_{hash}"  # envkiln.core.definition.DEFAULT_IMAGE_TEMPLATE
DEFAULT_CURATED_NAMESPACE = "envkiln-curated"  # envkiln.core.models.DEFAULT_CURATED_NAMESPACE (a unit test checks)
COMPLETE = "__complete"  # the hidden command the completion scripts call (envkiln.cli.completion)

DESCRIPTION = """\
envkiln builds Environments (versioned definitions: base image, docker steps, conda and pip packages,
or a build context) into images, once per definition. This command works on definition files offline
(hash, validate, render, diff, import) and reads the cluster's Environments with your kubeconfig, as
kubectl does (image, list, wait, logs, lock, diff). Installed as a kubectl plugin: `kubectl envkiln ...`.
"""

EPILOG = f"""\
global flags (before or after the command):
  --kubeconfig FILE, --context NAME, -n/--namespace NS, --request-timeout DURATION
  -o json|yaml on the commands that print objects; FILE may be - (standard input)

{exit_codes_text()}

docs/cli.md has every command, its flags and examples."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (exit 2): `error: envkiln wait: ...; see envkiln wait --help`."""

    def error(self, message: str) -> NoReturn:
        self.exit(Exit.USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The command function `name` of envkiln.cli.MODULE, imported when it runs (so that `envkiln
    --help`, completion and the offline commands do not load the kubernetes client)."""
    def run(args: argparse.Namespace) -> int:
        function: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(f"envkiln.cli.{module}"), name)
        return function(args)
    run.__name__ = name
    return run


def _complete(action: argparse.Action, kind: str) -> argparse.Action:
    """Tell the completion what a positional or an option's value is: file, dir, env, env-or-file."""
    action.complete = kind  # type: ignore[attr-defined]
    return action


def _duration(text: str) -> float:
    from envkiln.cli.follow import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return seconds


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    """--kubeconfig, --context, -n, --request-timeout: SUPPRESS defaults, so that the same flag given
    before the command (the main parser) is not reset by the command's parser."""
    _complete(parser.add_argument("--kubeconfig", metavar="FILE", default=argparse.SUPPRESS,
                                  help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"), "file")
    parser.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context (default: the current one)")
    _namespace_flag(parser, "namespace (default: the context's namespace, else default)")
    parser.add_argument("--request-timeout", dest="request_timeout_seconds", metavar="DURATION", type=_duration,
                        default=argparse.SUPPRESS,
                        help="time limit of each API request, e.g. 30s (default: 10s to connect, 60s for the "
                        "answer; a followed log has none)")


def _namespace_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    _complete(parser.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help=help_text), "namespace")


def _output_flag(parser: argparse.ArgumentParser, formats: tuple[str, ...] = ("json", "yaml"), what: str = "") -> None:
    shown = ", ".join(formats[:-1]) + " or " + formats[-1]
    parser.add_argument("-o", "--output", choices=formats, help=f"print {what or 'it'} as {shown}")


def build_parser(prog: str = "envkiln") -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"envkiln {__version__}")
    _cluster_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, cluster: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           epilog=exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
        if cluster:
            _cluster_flags(p)
        return p

    def with_files(p: argparse.ArgumentParser) -> None:
        _complete(p.add_argument("files", nargs="+", metavar="FILE",
                                 help="YAML files with Environment manifests (several documents allowed), "
                                 "directories of them, or - for standard input"), "file")
        p.add_argument("--curated-namespace", default=DEFAULT_CURATED_NAMESPACE,
                       help="namespace where reserved names (azureml-*, microsoft*) are allowed")
        _complete(p.add_argument("--context-dir", help="directory holding a ConfigMap build context's files"), "dir")

    p = command("hash", "print the definition hash and image name the operator would use")
    with_files(p)
    p.add_argument("--registry", default=DEFAULT_REGISTRY, help=f"registry host (default {DEFAULT_REGISTRY})")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="image repository template")
    _namespace_flag(p, "namespace of manifests that name none (the image path holds it; default: default)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, per environment")
    p.add_argument("--explain", action="store_true", help="print the document that is hashed")
    _output_flag(p, what="the rows (one: an object; several: a List)")
    p.set_defaults(func=_command("offline", "cmd_hash"))

    p = command("validate", "check manifests; exit 1 with field-named errors")
    with_files(p)
    p.set_defaults(func=_command("offline", "cmd_validate"))

    p = command("render", "write the Dockerfile and context files a build would use")
    with_files(p)
    _complete(p.add_argument("-o", "--output", default="envkiln-build", metavar="DIR",
                             help="output directory (default envkiln-build)"), "dir")
    p.set_defaults(func=_command("offline", "cmd_render"))

    p = command("crds", "regenerate the CRD manifests from the models")
    _complete(p.add_argument("-o", "--output", action="append", metavar="DIR",
                             help="directory (repeatable; default crds/ and the chart's)"), "dir")
    p.set_defaults(func=_command("offline", "cmd_crds"))

    p = command("image", "print the image reference (digest) of NAME[:VERSION] from the cluster", cluster=True)
    _complete(p.add_argument("reference", nargs="?", metavar="NAME[:VERSION]",
                             help="Environment name, optionally :version"), "env")
    p.add_argument("--hash", help="find the Environment by (a prefix of) its definition hash instead")
    _output_flag(p, what="name, namespace, version and image reference")
    p.set_defaults(func=_command("cluster", "cmd_image"))

    p = command("list", "list Environments in the cluster (anonymous ones with --anonymous)", cluster=True)
    p.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
    p.add_argument("--anonymous", action="store_true", help="include anonymous (inline) environments")
    _output_flag(p, ("json", "yaml", "name"), "the Environments")
    p.set_defaults(func=_command("cluster", "cmd_list"))

    p = command("import", "turn other tools' definitions into Environment manifests")
    source = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    p = source.add_parser("azureml", help="Azure ML CLI v2 YAML: environments, jobs, components, deployments, "
                          "asset folders", epilog=exit_codes_text(),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _complete(p.add_argument("paths", nargs="+", metavar="PATH",
                             help="YAML files or directories (asset folders, trees); - for one self-contained "
                             "YAML file on standard input"), "file")
    _complete(p.add_argument("-o", "--output", metavar="FILE",
                             help="write the manifests here (default: standard output)"), "file")
    _namespace_flag(p, "namespace to put in the manifests (default: none)")
    p.add_argument("--curated-namespace", default=DEFAULT_CURATED_NAMESPACE,
                   help="namespace of envkiln's curated environments")
    p.add_argument("--tarball-url", help="https base URL where directory contexts too big or nested for a "
                   "ConfigMap will be served; the importer writes NAME-context.tar for you to upload there")
    _complete(p.add_argument("--tarball-dir", help="where to write those tarballs (default: beside -o, or .)"), "dir")
    p.add_argument("--max-configmap-bytes", type=int, default=768 * 1024,
                   help="largest directory context put into a ConfigMap (default 786432)")
    _complete(p.add_argument("--root", help="the folder no path in the YAML may leave (e.g. a repository holding "
                             "jobs/ and components/); default: each PATH (a file's folder). Symbolic links are never "
                             "followed"), "dir")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="set_values",
                   help="fill the Azure ML template {{NAME}} with VALUE wherever it is written (repeatable; e.g. "
                   "--set asset.repo.url=https://github.com/ORG/REPO). Without it {{latest-image-tag}} is 'latest' "
                   "and ==/>= {{latest-pypi-version}} pins are dropped; any other template is an error")
    p.set_defaults(func=_command("offline", "cmd_import_azureml"))

    p = command("wait", "wait until NAME[:VERSION] is Ready and print its image reference (exit 1 when it "
                "failed, 3 on timeout, 4 when the API server stayed unreachable)", cluster=True)
    _complete(p.add_argument("reference", metavar="NAME[:VERSION]", help="Environment name, optionally :version"),
              "env")
    p.add_argument("--timeout", default="30m", help="give up after this long (e.g. 90s, 15m, 1h; default 30m); "
                   "API errors are retried until then")
    _output_flag(p, what="the Environment, once Ready, instead of its image reference")
    p.set_defaults(func=_command("cluster", "cmd_wait"))

    p = command("logs", "print the build pod's log of NAME[:VERSION] (-f: follow the build to its end)", cluster=True)
    _complete(p.add_argument("reference", metavar="NAME[:VERSION]", help="Environment name, optionally :version"),
              "env")
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream the log until the build ends, attempt after attempt; exit 1 if it failed")
    p.add_argument("--attempt", type=int, help="this attempt (1 = the first) instead of the latest")
    p.set_defaults(func=_command("cluster", "cmd_logs"))

    p = command("lock", "print the resolved packages (the lock) of NAME[:VERSION]; put it in spec.lock to "
                "rebuild exactly these", cluster=True)
    _complete(p.add_argument("reference", metavar="NAME[:VERSION]", help="Environment name, optionally :version"),
              "env")
    _output_flag(p, what="the packages by name (and the lock's text)")
    p.set_defaults(func=_command("cluster", "cmd_lock"))

    p = command("diff", "what changed between two environment versions or files: base image and its digest, "
                "docker steps, packages as declared and as resolved; exit 1 when they differ", cluster=True)
    _complete(p.add_argument("a", metavar="A", help="NAME[:VERSION] in the cluster, a lock file, an Environment "
                             "manifest, or - (standard input)"), "env-or-file")
    _complete(p.add_argument("b", metavar="B", help="the same for the other side"), "env-or-file")
    _output_flag(p, what="the differences")
    p.set_defaults(func=_command("cluster", "cmd_diff"))

    p = command("completion", "print a shell completion script: bash, zsh or fish (see docs/cli.md)")
    p.add_argument("shell", choices=("bash", "zsh", "fish"))
    p.set_defaults(func=_command("completion", "cmd_completion"))

    p = command("run", "run the operator against $KUBECONFIG or the in-cluster config")
    p.add_argument("--namespace", action="append", dest="watch", metavar="NAMESPACE",
                   help="namespace to watch (repeatable; default: all)")
    p.add_argument("--standalone", action="store_true", help="no peering with other replicas")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_run)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    if getattr(args, "kubeconfig", None) or getattr(args, "context", None):
        raise UsageError("run reads $KUBECONFIG (its current context) or the in-cluster config; set KUBECONFIG "
                         "instead of --kubeconfig or --context")
    from envkiln.runtime.runner import run_operator

    namespace = getattr(args, "namespace", None)  # `envkiln -n NS run`
    watch = list(args.watch or []) + ([namespace] if namespace else [])
    return run_operator(argparse.Namespace(namespace=watch or None, standalone=args.standalone,
                                           verbose=args.verbose))


def failure_exit(error: BaseException, server: str = "") -> tuple[int, str] | None:
    """(exit code, message) of an API refusal or a connection failure; None for anything else."""
    if not type(error).__module__.startswith(("kubernetes", "urllib3")) and not isinstance(
            error, ConnectionError | TimeoutError):
        return None
    from envkiln.adapters.kubeclient import describe_failure

    failure = describe_failure(error, server)
    if failure is None:
        return None
    return exit_for_status(failure.status), failure.message


def main(argv: list[str] | None = None, prog: str = "envkiln") -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == [COMPLETE]:
        from envkiln.cli.completion import complete_command

        return complete_command(build_parser(prog), arguments[1:], sys.stdout)
    parser = build_parser(prog)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as stop:  # argparse: --help and --version (0), usage errors (2)
        return int(stop.code or 0)
    args.from_process_start = argv is None  # the command line's own process: time limits count from its start
    try:
        return int(args.func(args))
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return int(error.code)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `envkiln logs x | head`: the reader left; say nothing (Python's own advice)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return Exit.OK
    except Exception as error:
        session = getattr(args, "session", None)  # the cluster commands' (envkiln.cli.session)
        found = failure_exit(error, session.server if session is not None else "")
        if found is None:
            raise
        print(f"error: {found[1]}", file=sys.stderr)
        return found[0]


def kubectl_main(argv: list[str] | None = None) -> int:
    """`kubectl envkiln ...`: kubectl runs the `kubectl-envkiln` script found on PATH."""
    return main(argv, prog="kubectl envkiln")


def kubectl_complete_main(argv: list[str] | None = None) -> int:
    """`kubectl_complete-envkiln`: what kubectl (1.26+) asks for `kubectl envkiln <TAB>`, in Cobra's format."""
    from envkiln.cli.completion import cobra_complete_command

    return cobra_complete_command(build_parser("kubectl envkiln"), list(sys.argv[1:] if argv is None else argv),
                                  sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
