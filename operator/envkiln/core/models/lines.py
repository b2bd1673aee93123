"""Validated text: the lines users write (requirements, channels, dependencies, docker steps).

Bounds keep specs small enough for etcd, keep the CRD's CEL rules within the API server's
cost budget, and keep reading the largest definition fast: every sync validates and hashes it
(docs/security.md, "Size caps"; tests/unit/test_size_caps.py). Every check here takes time
linear in the text (the regular expressions read each character once).
"""

from __future__ import annotations

import functools
import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from envkiln.core.models import buildkit

# Size caps (docs/security.md, "Size caps", says why each is what it is).
MAX_LINE = 512  # a requirement, conda dependency or channel: a wheel URL with its #sha256= fits
MAX_PACKAGES = 500  # entries of spec.pip, of conda dependencies, and of the conda pip block
MAX_CHANNELS = 20
MAX_STEPS = 32
MAX_STEP_LENGTH = 1024  # BuildKit's parser takes time growing faster than a line's length

# Patterns are written with ^...$ for the CRD schema (Go's `$` is the end of the text); Python's
# `$` also matches before a trailing line feed, so Python code must use re.fullmatch with them.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONDA_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:+-]*$")
# Characters that could end a line or reach a shell. Requirement and dependency lines are
# written into files in the build context (never onto a RUN line), but a newline or a
# shell metacharacter there is always a mistake or an attack, so they are refused early.
SHELL_META = set("`$|&\\\n\r\t\0{}")
_PIP_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "--pre", "--only-binary", "--no-binary")
# An option (`-x`, `--index-url ...`) after a requirement: pip reads per-requirement options there.
_TRAILING_OPTION = re.compile(r"\s-")
_MARKER_CHARS = re.compile(r"^[A-Za-z0-9_.\s'\"<>=!~()-]*$")
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,\s-]+\])?"  # name[extras]
    r"(\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+(\s*,\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?"
    r"\s*$"
)
# A conda package spec: a name (channel::name, channel/subdir::name), an optional [key=value] selector, then
# version constraints: blanks, '~=' and the characters of versions and operators (==, >=, <, !=, ',', '|'...).
# Each character is read once (possessive runs, one way to read each character): the nested form this
# replaces, (\s*(==|=|...)?\s*[...]*)*, could split a text in exponentially many ways, and 23 characters such
# as 'a=1=1=1=1=1=1=1=1=1=1=~' took 19 seconds to refuse.
_CONDA_DEP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:+-]*+(\[[^\]\n]*\])?(?:[\sA-Za-z0-9.*+!_,|<>=-]++|~=)*+$")
# The instructions a docker step may be. FROM/COPY/ADD reach outside the image (another
# base, the build context); ONBUILD defers an instruction to images built FROM this one, where
# no check runs.
_STEP_INSTRUCTIONS = {
    "RUN", "ENV", "WORKDIR", "USER", "LABEL", "ARG", "SHELL", "EXPOSE", "VOLUME",
    "ENTRYPOINT", "CMD", "STOPSIGNAL", "HEALTHCHECK",
}
# Instructions that are Dockerfile instructions but not allowed as steps, with the reason.
_REFUSED_INSTRUCTIONS = {
    "FROM": "the base is spec.image",
    "COPY": "there is no build context",
    "ADD": "there is no build context",
    "ONBUILD": "its instruction would run in images built from this one, where nothing checks it",
}
# A line continued by a single backslash (never an escaped one), then optional blanks.
_CONTINUED = re.compile(r"^(?P<content>.*[^\\])?\\[ \t]*$")


Line = Annotated[str, StringConstraints(max_length=MAX_LINE)]


# One regular-expression scan (C speed) finds whether a line holds any of SHELL_META; the characters
# are listed for the message only when one is there.
_SHELL_META_CHARACTER = re.compile("[" + re.escape("".join(sorted(SHELL_META))) + "]")


def check_line(text: str, what: str) -> str:
    if not text.strip():
        raise ValueError(f"{what} is empty; remove the entry")
    if _SHELL_META_CHARACTER.search(text):
        bad = sorted({repr(ch) for ch in text if ch in SHELL_META})
        raise ValueError(
            f"{what} {text!r} contains {', '.join(bad)}; line breaks and shell metacharacters are not "
            "allowed (put build commands in spec.dockerSteps)"
        )
    if not text.isascii():
        raise ValueError(f"{what} {text!r} contains non-ASCII characters (look for look-alike letters)")
    return text


# A URL's fragment (`#egg=name&subdirectory=dir`, `#sha256=...`): pip reads it, and it may hold '&'.
# The definition; `_url_fragments` finds the same matches (a unit test compares them), in linear time: this
# regular expression tries every start again and takes quadratic time on lines such as 'a-a-a-...://'.
_URL_FRAGMENT = re.compile(r"(?P<url>\b[a-z][a-z0-9+.-]*://[^\s#]+)#(?P<fragment>\S*)")
_FRAGMENT_CHARS = re.compile(r"[A-Za-z0-9_.=&/+-]*")
_URL_BACKWARDS = re.compile(r"#[^\s#]+//:[a-z0-9+.-]*[a-z](?!\w)")  # _URL_FRAGMENT's URL, reversed
_BLANK = re.compile(r"\s")
# URLs pip may fetch in a build: https archives and wheels, git over https; file:// (a path in the image)
# only after a name.
_DIRECT_URL = re.compile(r"(git\+https|https)://[^\s#;]+(#\S*)?")
_NAMED_URL = re.compile(r"(git\+https|https|file)://[^\s#;]+(#\S*)?")
_REFUSED_URL_SCHEMES = {
    "http://": "plain http can be tampered with on the way; write the https:// URL",
    "git+http://": "plain http can be tampered with on the way; write git+https://HOST/ORG/REPO.git@REF",
    "git+ssh://": "a build holds no SSH key; write git+https://HOST/ORG/REPO.git@REF",
    "git+git://": "the git protocol is neither authenticated nor encrypted; write git+https://HOST/ORG/REPO.git@REF",
    "git+file://": "a build has no repository on disk; write git+https://HOST/ORG/REPO.git@REF",
    "ssh://": "a build holds no SSH key; write git+https://HOST/ORG/REPO.git@REF",
    "hg+": "only git is installed for VCS requirements; publish a wheel or use a git+https:// URL",
    "svn+": "only git is installed for VCS requirements; publish a wheel or use a git+https:// URL",
    "bzr+": "only git is installed for VCS requirements; publish a wheel or use a git+https:// URL",
    "git@": "a build holds no SSH key; write git+https://HOST/ORG/REPO.git@REF",
}
# Options pip reads in a requirements file that name another file: refused with what to write instead.
_FILE_OPTIONS = {
    "-r": "reads another requirements file, and a system-managed environment has no files besides its "
          "definition: list that file's requirements here instead (`envkiln import azureml` inlines -r files), "
          "or use spec.build with a Dockerfile that COPYs the file",
    "--requirement": "",
    "-c": "reads a constraints file, and a system-managed environment has no files besides its definition: "
          "pin the versions in the requirements themselves (e.g. 'numpy==1.26.4'), or use spec.build with a "
          "Dockerfile that COPYs the file and runs pip with -c",
    "--constraint": "",
    "-e": "is an editable install, which needs a source tree in the image: write 'NAME @ git+https://HOST/ORG/"
          "REPO.git@REF' (or a wheel URL), or use spec.build",
    "--editable": "",
}
_FILE_OPTIONS["--requirement"] = _FILE_OPTIONS["-r"]
_FILE_OPTIONS["--constraint"] = _FILE_OPTIONS["-c"]
_FILE_OPTIONS["--editable"] = _FILE_OPTIONS["-e"]


def _url_fragments(text: str) -> list[tuple[int, int, int]]:
    """What `_URL_FRAGMENT.finditer(text)` finds, as (URL start, the '#', end) spans, in linear time.

    The URL of a match holds no blank and no '#', so it lies between a '#' and the blank or '#' before it.
    Read from the right (the text reversed), each '#' is tried once: _URL_BACKWARDS takes the leftmost '://'
    of that piece whose scheme has a letter after a non-word character, and the leftmost such letter, which
    is where _URL_FRAGMENT's leftmost match starts. A match's fragment runs to the next blank, so later '#'s
    of that token are not tried again, as in _URL_FRAGMENT.finditer."""
    if "#" not in text or "://" not in text:
        return []
    size = len(text)
    found: list[tuple[int, int, int]] = []
    end = 0
    for match in reversed(list(_URL_BACKWARDS.finditer(text[::-1]))):
        mark = size - 1 - match.start()
        if mark < end:
            continue  # in the fragment of the URL before it
        blank = _BLANK.search(text, mark)
        end = blank.start() if blank is not None else size
        found.append((size - match.end(), mark, end))
    return found


def _without_fragments(text: str, spans: list[tuple[int, int, int]]) -> str:
    """`_URL_FRAGMENT.sub(lambda m: m.group("url") + "#x", text)`: each URL's fragment becomes 'x'."""
    kept, last = [], 0
    for _, mark, end in spans:
        kept += [text[last:mark], "#x"]
        last = end
    return "".join([*kept, text[last:]])


def _check_url(url: str, what: str, text: str, named: bool) -> None:
    for scheme, instead in _REFUSED_URL_SCHEMES.items():
        if url.startswith(scheme):
            raise ValueError(f"{what} {text!r}: {scheme.rstrip(':/+@')} URLs are not supported: {instead}")
    if not (_NAMED_URL if named else _DIRECT_URL).fullmatch(url):
        kinds = "https://, git+https:// or file://" if named else "https:// or git+https://"
        raise ValueError(f"{what} {text!r}: {url!r} is not a URL pip can fetch in a build; use {kinds}")


# user[:password]@ right after a URL's scheme (not the @REF of git+https://HOST/ORG/REPO.git@REF).
# Only the schemes a build fetches (ssh and others are refused elsewhere); a fixed prefix keeps it linear.
_USERINFO = re.compile(r"((?:git\+)?https?://)[^/@\s]+@")


def check_pip_requirement(text: str, what: str = "requirement") -> str:
    """Validate one pip requirement line: a PEP 508 requirement (`name[extras] specifiers ; marker`,
    `name @ https|git+https|file://...`), a direct `https://` or `git+https://` URL, or one of a few
    index options. Options naming files (-r, -c, -e) are refused with what to write instead."""
    if _USERINFO.search(text):
        raise ValueError(
            f"{what} {_USERINFO.sub(lambda m: m.group(1) + '***@', text)!r} carries a credential in its URL; a "
            "definition is stored in the cluster and hashed, so it must hold none: give the index through the "
            "build environment instead (chart builds.env, e.g. PIP_EXTRA_INDEX_URL; docs/registries.md)")
    spans = _url_fragments(text)
    for fragment in (text[mark + 1:end] for _, mark, end in spans):
        if not _FRAGMENT_CHARS.fullmatch(fragment):
            raise ValueError(
                f"{what} {text!r}: the URL fragment #{fragment} has characters pip does not need there; "
                "write e.g. '#egg=NAME&subdirectory=DIR' or '#sha256=HEX'"
            )
    # '&' is fine inside a URL fragment (the line goes into requirements.txt, never onto a shell line).
    try:
        check_line(_without_fragments(text, spans), what)
    except ValueError:
        check_line(text, what)  # the same problem, told about the text as written
        raise
    stripped = text.strip()
    if stripped.startswith("-"):
        option = stripped.split("=", 1)[0].split(" ", 1)[0]
        if option in _FILE_OPTIONS:
            raise ValueError(f"{what} {text!r}: {option} {_FILE_OPTIONS[option]}")
        if option not in _PIP_OPTIONS:
            raise ValueError(
                f"{what} {text!r}: pip option {option} is not supported; allowed options: {', '.join(_PIP_OPTIONS)}"
            )
        return text
    requirement, _, marker = stripped.partition(";")
    if _TRAILING_OPTION.search(stripped):
        raise ValueError(
            f"{what} {text!r} carries a pip option after the requirement or its marker; put options on their "
            f"own line (allowed: {', '.join(_PIP_OPTIONS)})"
        )
    if marker and not _MARKER_CHARS.fullmatch(marker):
        raise ValueError(f"{what} {text!r}: the environment marker after ';' has characters a marker cannot have")
    requirement = requirement.strip()
    name, at, url = requirement.partition("@")
    if "://" in name or name.startswith(tuple(_REFUSED_URL_SCHEMES)):
        # A direct URL without a name (`git+https://...@v1#egg=x` has an '@' of its own).
        _check_url(requirement, what, text, named=False)
        return text
    if at and "://" in url:
        _check_url(url.strip(), what, text, named=True)
        requirement = name.strip()
    if requirement.startswith((".", "/", "~")) or requirement.endswith((".whl", ".tar.gz", ".zip")):
        raise ValueError(
            f"{what} {text!r} is a local path, and a system-managed environment has no files besides its "
            "definition: give a URL ('NAME @ https://HOST/NAME-1.0-py3-none-any.whl') or use spec.build"
        )
    if not _REQUIREMENT.fullmatch(requirement):
        raise ValueError(
            f"{what} {text!r} is not a pip requirement; expected e.g. 'numpy==1.26.4', 'torch>=2.2,<3', "
            "'NAME @ https://...' or 'git+https://HOST/ORG/REPO.git@REF'"
        )
    return text


def _pip_item(text: str) -> str:
    return check_pip_requirement(text, "requirement")


def _channel_item(channel: str) -> str:
    check_line(channel, "channel")
    if not _CONDA_CHANNEL.fullmatch(channel):
        raise ValueError(f"{channel!r} is not a conda channel name or URL")
    return channel


def _conda_dep_item(dep: str) -> str:
    check_line(dep, "dependency")
    if not _CONDA_DEP.fullmatch(dep.strip()):
        raise ValueError(f"{dep!r} is not a conda package spec (e.g. numpy=1.26)")
    return dep


PipLine = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_pip_item)]
ChannelLine = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_channel_item)]
CondaDependency = Annotated[str, StringConstraints(max_length=MAX_LINE), AfterValidator(_conda_dep_item)]

_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _control_characters(text: str) -> list[str]:
    # Besides the line feed and tab: \r, \v, \f and \x1c-\x1e (str.splitlines breaks), NUL, ESC, DEL...
    if not _CONTROL_CHARACTER.search(text):  # one scan at C speed; the list only for the message
        return []
    return sorted({repr(ch) for ch in text if (ord(ch) < 0x20 and ch not in "\t\n") or ord(ch) == 0x7F})


_HEREDOC = (
    "the step contains '<<', which starts a heredoc: BuildKit reads '<<WORD' as a body made of the following "
    "lines of the Dockerfile (and parsers differ on other uses of '<<', so none is allowed on a RUN line); "
    "write the command without '<<' (e.g. printf '...' > file)"
)
# What a step is parsed between, to see that it leaves the lines envkiln writes after it alone.
_BEFORE = "FROM scratch"
_AFTER = "ENV ENVKILN_NEXT_LINE=1"


@functools.cache
def _context_identities() -> tuple[tuple[object, ...], tuple[object, ...]]:
    before, after = (buildkit.parse(line)[0].identity for line in (_BEFORE, _AFTER))
    return before, after


def _read_in_context(text: str) -> buildkit.Instruction | None:
    """The one instruction BuildKit reads in the step between _BEFORE and _AFTER, when it reads those two
    lines back unchanged around it; None otherwise."""
    before, after = _context_identities()
    try:
        read = buildkit.parse(f"{_BEFORE}\n{text}\n{_AFTER}\n")
    except buildkit.DockerfileSyntaxError:
        return None
    if len(read) == 3 and read[0].identity == before and read[2].identity == after:
        return read[1]
    return None


def _parse_step(text: str) -> buildkit.Instruction:
    """The one instruction BuildKit reads in the step, or ValueError saying why there is not one."""
    try:
        instructions = buildkit.parse(text)
    except buildkit.DockerfileSyntaxError as error:
        if "heredoc" in str(error):
            raise ValueError(_HEREDOC) from None
        raise ValueError(f"BuildKit's Dockerfile parser cannot read the step: {error}") from None
    if not instructions:
        raise ValueError("the step holds no Dockerfile instruction; remove it")
    if len(instructions) > 1:
        first, second = instructions[0], instructions[1]
        raise ValueError(
            f"the step holds {len(instructions)} instructions: line {first.end_line} does not end with '\\' "
            "(a single one: an escaped '\\\\' does not continue the line), so BuildKit reads line "
            f"{second.start_line} as another instruction ({second.keyword or repr(second.original)}); "
            "give one instruction per entry"
        )
    return instructions[0]


def check_docker_step(step: str) -> str:
    """One allowed Dockerfile instruction, as BuildKit (which Kaniko vendors) splits Dockerfiles.

    The step is written into the rendered Dockerfile (stripped), so it must be exactly one
    instruction and must not change how the lines envkiln writes after it are read. BuildKit's
    own parser decides what the step is (envkiln.core.models.buildkit): refused are text that parses
    into no or several instructions, instructions outside the allow-list (FROM, COPY, ADD,
    ONBUILD, ...), options on RUN (--mount, --network, --security), heredocs, and a step that,
    parsed between two other lines, does not leave them as they were.

    Before and after the parse, cheap checks refuse what Dockerfile parsers (other versions,
    other builders) could read differently: control characters other than the line feed and
    tab, non-ASCII text (U+2028 and friends), comments and parser directives, continuation lines
    that are empty or end in an escaped backslash, a trailing backslash, and '<<' on a RUN line.
    """
    if not step.strip():
        raise ValueError("the step is empty; remove it")
    if not step.isascii():
        raise ValueError("the step contains non-ASCII characters (look for look-alike letters or line separators)")
    control = _control_characters(step)
    if control:
        raise ValueError(
            f"the step contains {', '.join(control)}; control characters (carriage return, form feed, ...) "
            "are not allowed: write one instruction per entry, continuing a long line with '\\' and a line feed"
        )
    text = step.strip()
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if line.strip().startswith("#"):
            raise ValueError(
                f"line {number} of the step is a comment or parser directive; Dockerfile parsers drop such "
                "lines inside an instruction (and read them as directives at the top), so docker steps cannot "
                "hold comments"
            )
    # BuildKit reads the step once, between two other lines, as the rendered Dockerfile holds it. When that
    # gives the two lines back around one instruction, that instruction is the step (a step read alone differs
    # only where a parser directive could stand, and comments are refused above); otherwise the step is read
    # alone, to say what is wrong with it. Parsing costs grow faster than the step's length: once, not twice.
    middle = _read_in_context(text)
    instruction = middle if middle is not None else _parse_step(text)
    keyword = instruction.keyword
    if keyword in _REFUSED_INSTRUCTIONS:
        raise ValueError(
            f"{keyword} is not allowed in docker steps ({_REFUSED_INSTRUCTIONS[keyword]}); "
            "use spec.build with your own Dockerfile instead"
        )
    written = text.split(None, 1)[0].upper()
    if keyword not in _STEP_INSTRUCTIONS or written != keyword:
        raise ValueError(
            f"the step starts with {written!r}, which is not a Dockerfile instruction envkiln allows; "
            "expected one of " + ", ".join(sorted(_STEP_INSTRUCTIONS))
        )
    if instruction.heredocs or (keyword == "RUN" and "<<" in text):
        # BuildKit reads `<<EOF` as a heredoc; parsers differ on other uses of '<<', so none is allowed.
        raise ValueError(_HEREDOC)
    if keyword == "RUN" and instruction.flags:
        raise ValueError(
            f"the step gives RUN the options {' '.join(instruction.flags)}; RUN options (--mount, --network, "
            "--security) reach outside the image (other images, shared caches, secrets, the host network) "
            "and are not allowed in docker steps"
        )
    if text.endswith("\\"):
        raise ValueError(
            "the step ends with '\\', which would continue it into the next line of the Dockerfile; "
            "remove the trailing backslash"
        )
    for number, line in enumerate(lines, start=1):
        if number < len(lines):
            continued = _CONTINUED.match(line)
            if continued is None:
                raise ValueError(
                    f"line {number} of the step does not end with a single '\\' (an escaped '\\\\' does not "
                    "continue the line in BuildKit, but does in other parsers); give one instruction per entry"
                )
            content = (continued.group("content") or "").strip()
        else:
            content = line.strip()
        if number > 1 and not content:
            raise ValueError(f"line {number} of the step is empty; remove the empty continuation line")
    if middle is None:
        raise ValueError(
            "the step changes how the Dockerfile lines after it are read (BuildKit reads it differently "
            "between two other lines); write it as one self-contained instruction"
        )
    return step


DockerStep = Annotated[
    str, StringConstraints(max_length=MAX_STEP_LENGTH), AfterValidator(lambda step: check_docker_step(step))
]

