"""The commands that need no cluster: hash, validate, render, crds, import azureml.

FILE arguments may be `-` (standard input) or a directory (its *.yaml, *.yml and *.json files).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from envkiln.adapters.gitrefs import GitRefError, GitResolver, resolve_git_commit
from envkiln.cli.errors import CliError, Exit, UsageError
from envkiln.cli.inputs import STDIN, STDIN_LABEL, NotText, read_all, read_text
from envkiln.cli.output import dump_items
from envkiln.core.decisions.network import UNRESTRICTED
from envkiln.core.definition import MissingContextContent, definition_document, definition_hash, image_name
from envkiln.core.manifests import LoadedEnvironment, LoadProblem, load_environments
from envkiln.core.models import EnvironmentKind
from envkiln.core.render import NothingToBuild, RenderError, render

REPO_ROOT_CRDS = Path("crds")
CHART_CRDS = Path("charts/envkiln/crds")


def _print_problems(problems: list[LoadProblem]) -> None:
    for problem in problems:
        for line in problem.problems:
            print(f"error: {problem.source}: {line}", file=sys.stderr)


def load(args: argparse.Namespace) -> tuple[list[LoadedEnvironment], int]:
    """The Environments of args.files; exit 2 (UsageError) when a file cannot be read, status 1 when a
    manifest is invalid (each problem on stderr)."""
    texts, not_text = read_all(args.files)
    loaded, problems = load_environments(list(texts), args.curated_namespace, texts=texts)
    problems = [LoadProblem(label, [why.removeprefix(f"{label}: ")]) for label, why in not_text.items()] + problems
    _print_problems(problems)
    return loaded, (Exit.FAILED if problems else Exit.OK)


def _context_data(item: LoadedEnvironment, context_dir: str | None) -> dict[str, str | bytes] | None:
    data = item.context_data()
    if data is None and context_dir and item.environment.spec.build and item.environment.spec.build.config_map:
        root = Path(context_dir)
        if not root.is_dir():
            raise UsageError(f"--context-dir {context_dir}: not a directory")
        data = {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}
    return data


def _hash(item: LoadedEnvironment, context_dir: str | None, resolver: GitResolver) -> tuple[str, str | None]:
    """(the definition hash, a git context's resolved commit): a branch or tag is asked of its remote,
    as the operator does."""
    commit = resolve_git_commit(item.environment.spec, resolver)
    return definition_hash(item.environment.spec, _context_data(item, context_dir), commit=commit), commit


def cmd_hash(args: argparse.Namespace) -> int:
    loaded, status = load(args)
    resolver = GitResolver(policy=UNRESTRICTED)  # the user's own machine and network: no SSRF to guard
    rows: list[dict[str, Any]] = []
    namespace = getattr(args, "namespace", None) or "default"  # -n: SUPPRESS when not given
    for item in loaded:
        env = item.environment
        try:
            value, commit = _hash(item, args.context_dir, resolver)
        except (MissingContextContent, GitRefError) as error:
            print(f"error: {item.source}: {error}", file=sys.stderr)
            status = Exit.FAILED
            continue
        if env.spec.kind is EnvironmentKind.BRING_YOUR_OWN:
            image = env.spec.image
        else:
            image = image_name(value, args.registry, args.template, env.metadata.namespace or namespace)
        row = {"name": env.metadata.name, "version": env.spec.version, "hash": value, "kind": env.spec.kind.value,
               "image": image, **({"resolvedCommit": commit} if commit else {})}
        if args.explain:
            print(json.dumps(definition_document(env.spec, _context_data(item, args.context_dir), commit=commit),
                             indent=2))
        elif args.json:
            print(json.dumps(row))
        elif args.output:
            rows.append(row)
        else:
            print(f"{env.metadata.name}\t{env.spec.version}\t{value}\t{image}")
    if args.output and rows:
        sys.stdout.write(dump_items(rows, args.output))
    return status


def cmd_validate(args: argparse.Namespace) -> int:
    loaded, status = load(args)
    for item in loaded:
        print(f"ok: {item.source} ({item.environment.spec.kind.value})")
    return status


def cmd_render(args: argparse.Namespace) -> int:
    loaded, status = load(args)
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
            status = Exit.FAILED
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
    return Exit.OK


def cmd_import_azureml(args: argparse.Namespace) -> int:
    """Azure ML CLI v2 YAML -> Environment manifests; one stderr line per definition found. `-` reads
    one YAML file from standard input: it must be self-contained (the files it names cannot be found)."""
    if args.paths.count(STDIN) > 1:
        raise UsageError("- (standard input) can be given once")
    for path in args.paths:
        if path != STDIN and not Path(path).exists():
            raise UsageError(f"{path}: no such file or directory")
    if STDIN not in args.paths:
        return _import_azureml(args, [Path(p) for p in args.paths])
    try:
        text = read_text(STDIN)
    except NotText as error:
        raise CliError(str(error)) from None  # a content problem, as an invalid file's (exit 1)
    with tempfile.TemporaryDirectory(prefix="envkiln-stdin-") as directory:  # the importer reads files
        stdin_file = Path(directory) / "stdin.yml"
        stdin_file.write_text(text)
        return _import_azureml(args, [stdin_file if p == STDIN else Path(p) for p in args.paths],
                               shown={str(stdin_file): STDIN_LABEL, directory: "(standard input)"})


def _import_azureml(args: argparse.Namespace, paths: list[Path], shown: dict[str, str] | None = None) -> int:
    from envkiln.core.azureml import ImportOptions, import_azureml, manifests_yaml

    variables: dict[str, str] = {}
    for given in getattr(args, "set_values", None) or []:
        name, equals, value = given.partition("=")
        name = name.strip()
        if not equals or not name or "{" in name or "}" in name:
            raise UsageError(f"--set {given!r}: write --set NAME=VALUE (NAME as inside {{{{...}}}}, e.g. "
                             "--set latest-image-tag=20240908.v1)")
        variables[name] = value
    options = ImportOptions(namespace=getattr(args, "namespace", None), curated_namespace=args.curated_namespace,
                            max_configmap_bytes=args.max_configmap_bytes, tarball_url=args.tarball_url,
                            tarball_dir=Path(args.tarball_dir or (Path(args.output).parent if args.output else ".")),
                            root=Path(args.root) if args.root else None, variables=variables)
    outcomes, tarballs = import_azureml(paths, options)
    for outcome in outcomes:
        line = outcome.line()
        for path, label in (shown or {}).items():
            line = line.replace(path, label)
        print(line, file=sys.stderr)
    for tarball, content in tarballs.items():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        tarball.write_bytes(content)
    text = manifests_yaml(outcomes)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("imported", "curated", "reference", "skipped", "error")}
    print("import azureml: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
    return Exit.FAILED if counts["error"] else Exit.OK
