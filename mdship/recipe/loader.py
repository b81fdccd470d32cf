"""Reading recipes: YAML with positions, `extends:`, `key=value` overrides, and one-line errors.

* ``load_recipe(path, overrides)`` reads YAML keeping the line and column of every key, resolves ``extends:``
  (deep merge, lists replaced), applies ``key.path=value`` overrides and validates with ``mdship.recipe.schema``.
* Every problem becomes one ``RecipeError`` line, ``file:line:col: key.path: what; expected what``, because a
  recipe is something a user edits by hand and a pydantic traceback does not say where.

PyYAML is used through its node API (``compose`` keeps marks; ``construct_document`` builds values), so positions
come from the parser itself. Duplicate keys, recursive aliases and alias bombs are refused here: PyYAML would keep
the last duplicate silently and expand aliases without bound.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from mdship import capabilities
from mdship.checkpoint import CHECKPOINT_HELP
from mdship.errors import RecipeError
from mdship.recipe.schema import Recipe, _Rule

#: how many bases an `extends:` chain may stack (a deeper one is a generated mistake, not a recipe)
MAX_EXTENDS_DEPTH = 32

# ----------------------------------------------------------------------------- YAML with marks


@dataclass(frozen=True)
class _Loc:
    """Where a value came from: 'file:line:col' of the value and of its key."""

    where: str
    key_where: str


Marks = dict  # key path tuple -> _Loc


class _MarkLoader(yaml.SafeLoader):
    """SafeLoader that keeps the node tree, so every key path can be mapped to its line/column."""


def _mark(display: str, mark: yaml.Mark) -> str:
    return f"{display}:{mark.line + 1}:{mark.column + 1}"


_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def _dotted(path: Iterable) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.match(str(part)) or not out:
            out += ("." if out else "") + str(part)
        else:  # a mapping key that is not a name (a module-name glob under layers:) is quoted
            out += f"[{str(part)!r}]"
    return out or "recipe"


_MAX_NODES = 20_000  # a recipe has a few hundred values; more means an alias bomb


def _check_duplicates(node: yaml.Node, display: str, loader: _MarkLoader, path: tuple,
                      ancestors: frozenset = frozenset(), budget: Optional[list] = None) -> None:
    """PyYAML silently keeps the last of two equal keys; in a recipe that is always a mistake.

    Also refuses recursive aliases (``&a [*a]``) and aliases that expand to a huge tree, both of
    which would otherwise hang the loader instead of giving an error.
    """
    budget = [0] if budget is None else budget
    budget[0] += 1
    if id(node) in ancestors:
        raise RecipeError(f"{_mark(display, node.start_mark)}: {_dotted(path)}: the value "
                          f"contains itself through an alias; expected a finite value")
    if budget[0] > _MAX_NODES:
        raise RecipeError(f"{_mark(display, node.start_mark)}: {_dotted(path)}: aliases expand "
                          f"the recipe beyond {_MAX_NODES} values; expected a plain recipe")
    ancestors = ancestors | {id(node)}
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # construction reports unhashable keys with their position
            if key in first:
                line = first[key].start_mark.line + 1
                raise RecipeError(f"{_mark(display, key_node.start_mark)}: "
                                  f"{_dotted(path + (key,))}: duplicate key (first set on line "
                                  f"{line}); expected each key once")
            first[key] = key_node
            _check_duplicates(value_node, display, loader, path + (key,), ancestors, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, display, loader, path + (i,), ancestors, budget)


def _collect_marks(node: yaml.Node, display: str, loader: _MarkLoader, path: tuple,
                   key_where: str, marks: Marks) -> None:
    """Record a _Loc for every key path. Collections point at their key, scalars at the value."""
    value_where = _mark(display, node.start_mark)
    collection = isinstance(node, (yaml.MappingNode, yaml.SequenceNode))
    marks[path] = _Loc(key_where if collection else value_where, key_where)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:  # merge keys are flattened by now
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise RecipeError(f"{_mark(display, key_node.start_mark)}: "
                                  f"{_dotted(path + (str(key),))}: key {key!r} is not a name; "
                                  f"expected a text key")
            _collect_marks(value_node, display, loader, path + (key,),
                           _mark(display, key_node.start_mark), marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            where = _mark(display, item.start_mark)
            _collect_marks(item, display, loader, path + (i,), where, marks)


def _missing_file_message(path: Path, display: str) -> str:
    siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1)
    hint = f"; did you mean '{path.parent / close[0]}'?" if close else ""
    return f"{display}: no such recipe file{hint}"


def _read_yaml(path: Path, display: str) -> tuple[dict, Marks]:
    """Load one YAML file as a mapping plus the marks of its key paths."""
    if path.is_dir():
        raise RecipeError(f"{display}: is a directory; expected a recipe .yaml file")
    if not path.is_file():
        raise RecipeError(_missing_file_message(path, display))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{display}: not UTF-8 text (byte {exc.start}); "
                          f"expected a YAML file") from None
    except OSError as exc:
        raise RecipeError(f"{display}: cannot read: {exc.strerror}") from None

    try:
        loader = _MarkLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character or other non-printable text
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise RecipeError(f"{display}:{line}:{column}: invalid YAML: character {exc.character:#06x} is not "
                          f"allowed; expected printable text") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise RecipeError(f"{display}: the recipe is empty; expected a mapping with "
                              f"checkpoint, output and targets")
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
            raise RecipeError(f"{_mark(display, node.start_mark)}: the recipe is {kind}; "
                              f"expected a mapping of keys (checkpoint:, output:, targets:, ...)")
        _check_duplicates(node, display, loader, ())
        data = loader.construct_document(node)
        marks: Marks = {}
        root = f"{display}:1:1"
        _collect_marks(node, display, loader, (), root, marks)
        marks[()] = _Loc(root, root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _mark(display, mark) if mark else display
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise RecipeError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{display}: invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    return data, marks


# ----------------------------------------------------------------------------- extends, overrides


def _replace_subtree(marks: Marks, source: Marks, path: tuple) -> None:
    n = len(path)
    for key in [k for k in marks if k[:n] == path]:
        del marks[key]
    marks.update({k: v for k, v in source.items() if k[:n] == path})


def _deep_merge(base: dict, base_marks: Marks, over: dict, over_marks: Marks
                ) -> tuple[dict, Marks]:
    """Mappings merge key by key, anything else (lists included) is replaced by ``over``."""
    data = copy.deepcopy(base)
    marks = dict(base_marks)

    def merge(dst: dict, src: dict, path: tuple) -> None:
        for key, value in src.items():
            sub = path + (key,)
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                if sub in over_marks:
                    marks[sub] = over_marks[sub]
                merge(dst[key], value, sub)
            else:
                dst[key] = copy.deepcopy(value)
                _replace_subtree(marks, over_marks, sub)

    merge(data, over, ())
    if () in over_marks:
        marks[()] = over_marks[()]
    return data, marks


def _resolve(path: Path, display: str, stack: tuple[Path, ...]) -> tuple[dict, Marks, list[str]]:
    """Load ``path`` with its ``extends`` chain merged in; returns data, marks, chain of files."""
    data, marks = _read_yaml(path, display)
    if "extends" not in data:
        return data, marks, []
    extends = data.pop("extends")
    ext_loc = marks[("extends",)]
    names = [extends] if isinstance(extends, str) else extends
    if not isinstance(names, list) or not names or \
            not all(isinstance(n, str) and n.strip() for n in names):
        raise RecipeError(f"{ext_loc.where}: extends: {_show(extends)} is not a file name; "
                          f"expected a recipe path relative to this file, or a list of them")

    merged: dict = {}
    merged_marks: Marks = {}
    chain: list[str] = []
    for i, name in enumerate(names):
        loc = marks.get(("extends", i), ext_loc) if isinstance(extends, list) else ext_loc
        base_path = (path.parent / name).resolve()
        base_display = os.path.normpath(os.path.join(os.path.dirname(display), name))
        if len(stack) > MAX_EXTENDS_DEPTH:
            raise RecipeError(f"{loc.where}: extends: the chain of bases is deeper than {MAX_EXTENDS_DEPTH}; "
                              f"expected a short chain (a base that extends a base ...)")
        if base_path in stack:
            cycle = " -> ".join([p.name for p in stack[stack.index(base_path):]] + [base_path.name])
            raise RecipeError(f"{loc.where}: extends: cycle {cycle}; "
                              f"expected a chain of bases that ends")
        if not base_path.exists():
            raise RecipeError(f"{loc.where}: extends: no such file '{name}' "
                              f"(looked for {base_display}); expected a path relative to "
                              f"{os.path.dirname(display) or '.'}")
        base, base_marks, base_chain = _resolve(base_path, base_display, stack + (base_path,))
        merged, merged_marks = _deep_merge(merged, merged_marks, base, base_marks)
        chain += base_chain + [base_display]

    own_marks = {k: v for k, v in marks.items() if k[:1] != ("extends",)}
    merged, merged_marks = _deep_merge(merged, merged_marks, data, own_marks)
    return merged, merged_marks, chain


_PATH_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _parse_key_path(key: str) -> Optional[tuple]:
    path: list = []
    for part in key.split("."):
        match = _PATH_PART.match(part)
        if not match:
            return None
        path.append(match.group(1))
        path.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return tuple(path)


def _apply_override(data: dict, marks: Marks, text: str) -> None:
    """Apply one ``key.path=value`` override; the value is YAML (scalar or flow collection)."""
    label = f"<override '{text}'>"
    key, sep, raw = text.partition("=")
    if not sep:
        raise RecipeError(f"{label}: no '='; expected KEY.PATH=VALUE, e.g. sampler.steps=4")
    path = _parse_key_path(key.strip())
    if not path:
        raise RecipeError(f"{label}: '{key.strip()}' is not a key path; expected names "
                          f"separated by dots, e.g. sampler.steps or targets[0].backend")
    if path[0] == "extends":
        raise RecipeError(f"{label}: extends: cannot be overridden (bases are merged before "
                          f"overrides); expected another key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{label}: {_dotted(path)}: value {raw!r} is not valid YAML "
                          f"({' '.join(problem.split())}); expected a YAML scalar or flow "
                          f"value, e.g. 4, fp16 or [{{backend: vulkan}}]") from None
    loc = _Loc(label, label)

    node: Any = data
    for depth, part in enumerate(path):
        here = path[: depth + 1]
        last = depth == len(path) - 1
        if isinstance(part, str):
            if not isinstance(node, dict):
                raise RecipeError(f"{label}: {_dotted(path[:depth])}: is {_kind(node)}, not a "
                                  f"mapping; expected a key path that exists in the recipe")
            if last:
                node[part] = value
            elif node.get(part) is None:  # absent or empty: create the section
                node[part] = {} if isinstance(path[depth + 1], str) else []
                marks[here] = loc
            if last:
                break
            node = node[part]
        else:
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise RecipeError(f"{label}: {_dotted(here)}: no such list item (the list has "
                                  f"{size}); expected an index below {size}")
            if last:
                node[part] = value
                break
            node = node[part]
    _replace_subtree(marks, {}, path)
    marks[path] = loc


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"the value {_show(value)}"


def _show(value: Any) -> str:
    """A value as the user would have typed it in YAML."""
    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    if isinstance(value, str):
        text = repr(value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- error messages


def _model_at(path: tuple) -> Optional[type[BaseModel]]:
    """The schema model that validates the mapping at ``path`` (None for non-models)."""
    model: Any = Recipe
    keyed = False  # the previous part was a mapping field (dict[str, Model]): this part is one of its keys
    for part in path:
        if isinstance(part, int) or keyed:
            keyed = False
            continue  # list items and mapping keys: _unwrap already gave the item model
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
        keyed = get_origin(field.annotation) is dict
    return model


def _unwrap_model(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _unwrap_model(arg)
        if found:
            return found
    return None


_FIELD_HELP = {
    "checkpoint": CHECKPOINT_HELP,
    "output": "an output directory, e.g. artifacts/my-recipe",
    "targets": f"a list of targets, e.g. [{{backend: {capabilities.BACKENDS[0]}}}]",
    "backend": f"one of {', '.join(capabilities.BACKENDS)}",
    "keep": "a list of module-name globs, e.g. [conv_in, '*norm*']",
    "layers": "a mapping of module-name globs to layer formats, e.g. {mid_transformer.layers.0.ff.proj_in: "
              "{weights: int8, granularity: per_channel, activations: int8_dynamic}}",
    "fallback": f"a list, e.g. [{capabilities.FALLBACK_BACKENDS[0]}]",
}


def _explain(error: dict, path: tuple) -> str:
    """'what is wrong; expected what' for one pydantic error."""
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx", {})
    last = path[-1] if path else ""
    help_text = _FIELD_HELP.get(last) if isinstance(last, str) else None
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        allowed = list(model.model_fields) if model else []
        if model is Recipe:
            allowed = [k for k in allowed if k != "extends"] + ["extends"]
        close = difflib.get_close_matches(str(last), allowed, n=1)
        if close:
            return f"unknown key '{last}'; did you mean '{close[0]}'?"
        return f"unknown key '{last}'; expected one of: {', '.join(allowed)}"
    if kind == "missing":
        return f"missing required key; expected {help_text or 'a value'}"
    if kind == "literal_error":
        return f"{_show(value)} is not allowed; expected {ctx.get('expected')}"
    if kind == "dict_type" and help_text:
        return f"{_show(value)} is not a mapping; expected {help_text}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        model = _model_at(path)
        keys = f" with keys {', '.join(model.model_fields)}" if model else ""
        return f"{_show(value)} is not a mapping; expected a mapping{keys}"
    if kind == "list_type":
        return f"{_show(value)} is not a list; expected {help_text or 'a list'}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{_show(value)} is not an integer; expected an integer"
    if kind == "finite_number":
        return f"{_show(value)} is not a finite number; expected a finite number"
    if kind in ("float_type", "float_parsing"):
        return f"{_show(value)} is not a number; expected a number"
    if kind in ("bool_type", "bool_parsing"):
        return f"{_show(value)} is not a boolean; expected true or false"
    if kind == "string_type":
        return f"{_show(value)} is not text; expected {help_text or 'a string'}"
    if kind == "too_short":
        at_least = f"at least {ctx.get('min_length')} item"
        return f"is empty; expected {help_text or at_least}"
    if kind == "string_too_short":
        return f"is empty; expected {help_text or 'a non-empty string'}"
    bounds = {"greater_than_equal": ("too small", ">=", "ge"),
              "greater_than": ("too small", ">", "gt"),
              "less_than_equal": ("too large", "<=", "le"),
              "less_than": ("too large", "<", "lt")}
    if kind in bounds:
        what, op, name = bounds[kind]
        return f"{_show(value)} is {what}; expected a value {op} {ctx.get(name)}"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}"


def _locate(marks: Marks, path: tuple, at_key: bool) -> str:
    """The position of ``path``, or of its nearest ancestor present in the file(s)."""
    for n in range(len(path), -1, -1):
        loc = marks.get(path[:n])
        if loc is not None:
            return loc.key_where if (at_key or n < len(path)) else loc.where
    return "<recipe>"


def _format_validation_error(exc: ValidationError, marks: Marks) -> str:
    errors = exc.errors(include_url=False)
    # An unknown key usually explains the other errors (a misspelt 'targts' also makes
    # 'targets' missing), so it is reported first.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _Rule):
        path, message = path + cause.path, str(cause)
    else:
        message = _explain(error, path)
    where = _locate(marks, path, at_key=error["type"] in ("extra_forbidden", "missing"))
    return f"{where}: {_dotted(path)}: {message}"


# ----------------------------------------------------------------------------- public API


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Load, merge (``extends``), override and validate a recipe; raise RecipeError on any fault.

    ``overrides`` are ``key.path=value`` strings (value parsed as YAML), applied in order after
    ``extends`` is resolved; their errors are reported as ``<override 'key=value'>``.
    """
    path = Path(path)
    display = str(path)
    if not path.exists():
        raise RecipeError(_missing_file_message(path, display))
    resolved = path.resolve()
    data, marks, chain = _resolve(resolved, display, (resolved,))
    overrides = tuple(overrides)
    for text in overrides:
        _apply_override(data, marks, text)
    data["extends"] = chain
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(exc, marks)) from None
    recipe._source = path
    return recipe


def list_recipes(directory: str | Path = "recipes") -> list[tuple[str, str]]:
    """(name, description) of each top-level ``*.yaml`` recipe in ``directory`` (bases in
    subfolders are not listed). A recipe that does not validate is listed with its error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecipeError(f"{directory}: no such recipes directory")
    found = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            description = load_recipe(path).description
        except RecipeError as exc:
            description = f"(invalid: {exc})"
        found.append((path.stem, description))
    return found

