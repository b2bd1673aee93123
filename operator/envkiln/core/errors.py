"""Turn validation failures into one message per problem that names the field."""

from __future__ import annotations

from pydantic import ValidationError

# pydantic puts union member names into error locations; users never wrote those.
_UNION_TAGS = {"str", "CondaPipBlock", "constrained-str", "function-after[_pip_lines(), CondaPipBlock]"}

_WRONG_TYPE = ("string_type", "model_type", "dict_type")


class DefinitionError(ValueError):
    """An Environment definition a user must fix. `problems` are 'field: message' lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def field_path(loc: tuple[str | int, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _UNION_TAGS or part.startswith("function-") or part.startswith("constrained-"):
            continue
        else:
            path = f"{path}.{part}" if path else part
    return path


def describe(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem; union alternatives that both failed are reported once."""
    problems: list[str] = []
    seen_paths: set[str] = set()
    items = error.errors(include_url=False)
    paths = [field_path(tuple(item["loc"]), prefix) or prefix or "(document)" for item in items]
    for item, path in zip(items, paths, strict=True):
        if item["type"] in _WRONG_TYPE and any(other.startswith((path + ".", path + "[")) for other in paths):
            continue  # a union member that did not fit, while another one got further: report that one
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        elif item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling (fields are camelCase, e.g. dockerSteps)"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "literal_error" and path.endswith("apiVersion"):
            message = f"{message}; this is not an envkiln resource"
        if path in seen_paths and item["type"] in _WRONG_TYPE:
            continue
        seen_paths.add(path)
        if path == "(document)" and message.startswith("metadata."):
            problems.append(message.replace(" is required", ": required field is missing", 1))
        elif message.startswith(("spec.", "metadata.")) and path in ("spec", "(document)"):
            problems.append(message)  # the message already names its field
        else:
            problems.append(f"{path}: {message}")
    return problems
