"""Reading manifest text: YAML that refuses duplicate keys and absurd nesting.

PyYAML's SafeLoader keeps the last of two equal keys (`pip: [six]` then `pip: [evil]` reads as
`[evil]`, while a reviewer may have read the first) and builds nested collections by recursion,
so a few thousand `[` end in a RecursionError. StrictLoader refuses both with a YAML error that
carries a line and column, like any other syntax problem.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

# Far beyond any manifest (an Environment nests about 6 levels), far below Python's recursion limit.
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that raises on a duplicate mapping key and on nesting deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            problem = f"collections are nested more than {MAX_DEPTH} levels deep"
            raise yaml.composer.ComposerError(None, None, problem, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *anchor` merges; its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader refuses it itself
                if duplicate:
                    raise ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"found duplicate key {key!r}; each key may appear once (YAML would keep only the last)",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def load_all(text: str) -> list[Any]:
    """Every non-empty document of `text`; raises yaml.YAMLError (with a mark) on any problem."""
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc is not None]
