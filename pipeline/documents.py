"""Manifest files on disk as documents: YAML (a safe loader refusing duplicate keys and YAML
1.1's surprises) or JSON (`.json`, duplicate keys refused too); `pipeline.manifest` checks what
they hold, and `pipeline.csvmanifest` reads CSV into the same shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.errors import ManifestError

# libyaml's parser when PyYAML has it: the pure-Python one takes about 1 ms a job on a
# 10,000-job manifest (issue 6); both build the same nodes for the constructor below
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):
    """A safe loader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_unique_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, bool):
            # YAML 1.1: `no`, `on`, `yes`, `off` as keys become booleans (Norway's "no")
            problem = f"key {key_node.value!r} reads as {key}: write it in quotes"
            raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        if not isinstance(key, str | int | float) and key is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"keys must be plain words, not {type(key).__name__}",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def read_document(path: Path) -> Any:
    """The YAML (or, for `.json`, JSON) document in `path`; duplicate keys refused."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"{path}: cannot read manifest: {exc}"]) from exc
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except ValueError as exc:
            raise ManifestError([f"{path}: invalid JSON: {exc}"]) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ManifestError([f"{path}: invalid YAML: {detail}"]) from exc


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json keeps the last, as PyYAML would)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def output_dir_of(path: Path) -> Path | None:
    """The `output_dir` a manifest names, read even when the manifest does not load (so a run
    stopped by a bad manifest still knows where its report goes); None if it names none (a
    CSV manifest never does)."""
    if path.suffix.lower() == ".csv":
        return None
    try:
        data = read_document(path)
    except ManifestError:
        return None
    value = data.get("output_dir") if isinstance(data, dict) else None
    return path.resolve().parent / value if isinstance(value, str) and value.strip() else None
