"""Shell completion: `envkiln completion bash|zsh|fish` prints a small script that asks the command
itself (`envkiln __complete WORDS...`) what may come next, as kubectl's (Cobra's) scripts do. So the
commands, flags and choices come from the one argparse parser, and Environment names from the
cluster (`list`, with the typed --kubeconfig, --context and -n, and a 3 s limit).

`complete` is the engine: the words typed so far -> candidates (value, description) and whether the
shell should add file or directory names. `envkiln __complete` prints the kind on the first line, then
one `value<TAB>description` line per candidate; `kubectl_complete-envkiln` prints Cobra's format for
`kubectl envkiln <TAB>` (kubectl 1.26+).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TextIO

from envkiln.cli.errors import Exit
from envkiln.core.names import ENVIRONMENTS

Kind = Literal["none", "files", "dirs"]
NAMES_SECONDS = 3.0  # the longest a TAB waits for the cluster's Environment names

# Cobra's ShellCompDirective values, for kubectl: 0 default (files), 4 no file completion, 16 directories.
COBRA_DIRECTIVES: dict[Kind, int] = {"files": 0, "none": 4, "dirs": 16}


@dataclass(frozen=True)
class Completion:
    candidates: tuple[tuple[str, str], ...] = ()  # (value, description)
    kind: Kind = "none"


Names = Callable[[Mapping[str, str]], list[str]]  # the flags typed (dest -> value) -> Environment names


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0 and not isinstance(action, argparse._VersionAction | argparse._HelpAction)


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def _describe(text: str | None) -> str:
    line = " ".join((text or "").split()).replace("%(default)s", "")
    return line if len(line) <= 70 else line[:67].rsplit(" ", 1)[0] + "..."


def _values(action: argparse.Action, current: str, flags: Mapping[str, str], names: Names) -> Completion:
    """What may be the value of `action` (an option's value, or a positional)."""
    if action.choices:
        return Completion(tuple((str(c), "") for c in action.choices if str(c).startswith(current)))
    kind = getattr(action, "complete", None)
    if kind in ("file", "dir"):
        return Completion(kind="files" if kind == "file" else "dirs")
    if kind in ("env", "env-or-file"):
        found = tuple((name, "Environment") for name in names(flags) if name.startswith(current))
        return Completion(found, "files" if kind == "env-or-file" else "none")
    return Completion()


def complete(parser: argparse.ArgumentParser, words: list[str], names: Names) -> Completion:
    """What may come as the last of `words` (the arguments typed so far; the last one is being typed)."""
    current, before = (words[-1], words[:-1]) if words else ("", [])
    here, flags, consumed, index = parser, {}, 0, 0
    globals_ = _options(parser)
    while index < len(before):
        word = before[index]
        index += 1
        if word.startswith("-") and word != "-":
            flag, equals, value = word.partition("=")
            action = _options(here).get(flag) or globals_.get(flag)
            if action is None or not _takes_value(action):
                continue
            if equals:
                flags[action.dest] = value
            elif index < len(before):
                flags[action.dest] = before[index]
                index += 1
            else:  # the word being typed is this option's value
                return _values(action, current, flags, names)
            continue
        subcommands = _subcommands(here)
        if subcommands is not None and word in subcommands.choices:
            here, consumed = subcommands.choices[word], 0
        else:
            consumed += 1
    if current.startswith("-") and current != "-":
        options = {**(globals_ if here is parser else {}), **_options(here)}
        return Completion(tuple((flag, _describe(action.help)) for flag, action in options.items()
                                if flag.startswith(current) and action.help != argparse.SUPPRESS))
    subcommands = _subcommands(here)
    if subcommands is not None:
        helps = {choice.dest: choice.help for choice in subcommands._choices_actions}
        return Completion(tuple((name, _describe(helps.get(name))) for name in subcommands.choices
                                if name.startswith(current)))
    position = 0
    for action in _positionals(here):
        span = 1 if action.nargs in (None, "?", 1) else 10**6
        if consumed < position + span:
            return _values(action, current, flags, names)
        position += span
    return Completion()


def cluster_names(flags: Mapping[str, str]) -> list[str]:
    """Environment names for a TAB: the typed --kubeconfig, --context and -n; nothing when the cluster
    does not answer within NAMES_SECONDS."""
    from envkiln.cli.session import Session

    session = Session(flags.get("kubeconfig"), flags.get("context"), flags.get("namespace"))
    try:
        cluster = session.cluster(deadline=time.monotonic() + NAMES_SECONDS)
        return sorted(e["metadata"]["name"] for e in cluster.kube.list_in(ENVIRONMENTS, [session.namespace]))
    except Exception:  # a TAB never fails: no names is the answer
        return []


def complete_command(parser: argparse.ArgumentParser, words: list[str], out: TextIO,
                     names: Names = cluster_names) -> int:
    """`envkiln __complete WORDS...`: the kind, then `value<TAB>description` lines."""
    found = complete(parser, words, names)
    out.write(found.kind + "\n" + "".join(f"{value}\t{text}\n" for value, text in found.candidates))
    return Exit.OK


def cobra_complete_command(parser: argparse.ArgumentParser, words: list[str], out: TextIO,
                           names: Names = cluster_names) -> int:
    """kubectl's plugin completion (Cobra's __complete format): candidates, then `:DIRECTIVE`."""
    found = complete(parser, words or [""], names)
    out.write("".join(f"{value}\t{text}\n" if text else f"{value}\n" for value, text in found.candidates))
    out.write(f":{COBRA_DIRECTIVES[found.kind]}\n")
    return Exit.OK


# --- the scripts ----------------------------------------------------------------------------------

BASH = r"""# envkiln completion for bash. Load it:  source <(envkiln completion bash)
# or install it:  envkiln completion bash > ~/.local/share/bash-completion/completions/envkiln
_envkiln() {
    local cur="${COMP_WORDS[COMP_CWORD]}" kind="" line value
    COMPREPLY=()
    while IFS= read -r line; do
        if [ -z "$kind" ]; then kind="$line"; continue; fi
        value="${line%%$'\t'*}"
        [[ "$value" == "$cur"* ]] && COMPREPLY+=("$value")
    done < <("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null)
    case "$kind" in
        files) compopt -o filenames 2>/dev/null
               while IFS= read -r line; do COMPREPLY+=("$line"); done < <(compgen -f -- "$cur") ;;
        dirs) compopt -o filenames 2>/dev/null
              while IFS= read -r line; do COMPREPLY+=("$line"); done < <(compgen -d -- "$cur") ;;
    esac
    return 0
}
complete -F _envkiln envkiln
"""

ZSH = r"""#compdef envkiln
# envkiln completion for zsh. Load it (after compinit):  source <(envkiln completion zsh)
# or install it as _envkiln in a directory of your $fpath:  envkiln completion zsh > "${fpath[1]}/_envkiln"
_envkiln() {
    local -a lines described
    local kind line value
    lines=("${(@f)$("${words[1]}" __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    (( ${#lines} )) || return 1
    kind="${lines[1]}"
    for line in "${(@)lines[2,-1]}"; do
        [[ -n "$line" ]] || continue
        value="${line%%$'\t'*}"
        described+=("${value//:/\\:}:${line#*$'\t'}")
    done
    (( ${#described} )) && _describe -t values envkiln described
    case "$kind" in
        files) _files ;;
        dirs) _files -/ ;;
    esac
    return 0
}
if [ "$funcstack[1]" = "_envkiln" ]; then
    _envkiln "$@"
else
    compdef _envkiln envkiln
fi
"""

FISH = r"""# envkiln completion for fish. Load it:  envkiln completion fish | source
# or install it:  envkiln completion fish > ~/.config/fish/completions/envkiln.fish
function __envkiln_complete
    set -l tokens (commandline -opc)
    set -l current (commandline -ct)
    set -l program $tokens[1]
    set -e tokens[1]
    set -l lines ($program __complete $tokens "$current" 2>/dev/null)
    test (count $lines) -gt 0; or return
    set -l kind $lines[1]
    set -e lines[1]
    for line in $lines
        echo $line
    end
    switch $kind
        case files
            __fish_complete_path "$current"
        case dirs
            __fish_complete_directories "$current"
    end
end
complete -c envkiln -f -a '(__envkiln_complete)'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(SCRIPTS[args.shell])
    return Exit.OK
