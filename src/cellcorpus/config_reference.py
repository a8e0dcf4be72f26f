"""`docs/config.md`: every config key with its type, default and meaning, generated from the pydantic models.

Types and defaults come from the models; a key's meaning from the comment next to it in `config.py` (the
line's trailing comment, else the comment lines right above it), a section's from its class docstring.
Written by hand because pydantic reads neither comments nor (without a docstring per field) any meaning;
`python -m cellcorpus.config_reference > docs/config.md` regenerates the page, and a test keeps it current.
"""

from __future__ import annotations

import inspect
import io
import tokenize
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import cellcorpus.config as config_module
from cellcorpus.config import Config

__all__ = ["config_reference"]


def _comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment that explains it, read from config.py's source."""
    source = inspect.getsource(config_module)
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    trailing = {t.start[0]: t.string.lstrip("# ").strip() for t in tokens if t.type == tokenize.COMMENT}
    current = ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if line.startswith("class "):
            current = stripped.split("(")[0].removeprefix("class ").strip(":")
            continue
        if not line.startswith("    ") or line.startswith("        ") or ":" not in stripped:
            continue
        name = stripped.split(":")[0].strip()
        if not name.isidentifier() or stripped.startswith(("#", "def ", "@", "return", '"')):
            continue
        text = trailing.get(number, "") if not stripped.startswith("#") else ""
        if not text:  # the comment block right above
            above: list[str] = []
            k = number - 2
            while k >= 0 and lines[k].strip().startswith("#") and lines[k].strip() != "#":
                above.insert(0, lines[k].strip().lstrip("# ").strip())
                k -= 1  # (a bare `#` line ends the block: what is above it speaks of more than this key)
            text = " ".join(above)
        if text and not text.startswith("fmt:"):
            out[(current, name)] = text
    return out


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "(section defaults)" if isinstance(value, BaseModel) else f"`{value!r}`"
    return "`null`" if field.default is None or field.default is PydanticUndefined else f"`{field.default!r}`"


def _sections(model: type[BaseModel], prefix: str, seen: list[tuple[str, type[BaseModel]]]) -> None:
    """Every nested section (a list of sections is named `key[]`), depth first, in field order."""
    for name, field in model.model_fields.items():
        options = [a for a in (typing.get_args(field.annotation) or (field.annotation,)) if a is not type(None)]
        for candidate in (
            options if typing.get_origin(field.annotation) in (typing.Union, types.UnionType) else [field.annotation]
        ):
            is_list = typing.get_origin(candidate) is list
            inner = typing.get_args(candidate)[0] if is_list else candidate
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                key = f"{prefix}{name}{'[]' if is_list else ''}"
                seen.append((key, inner))
                _sections(inner, f"{key}.", seen)


def config_reference() -> str:
    """The whole page, as markdown."""
    comments = _comments()
    parts = [
        "# Config keys",
        "",
        "Generated from the pydantic models in `src/cellcorpus/config.py` by "
        "`python -m cellcorpus.config_reference > docs/config.md` (a test keeps this page current). Every "
        "section is optional until a stage needs it; an unknown key is an error naming it. With a top-level "
        "`output_root`, location keys a section leaves out are derived from it (README, Config).",
    ]
    sections: list[tuple[str, type[BaseModel]]] = [("", Config)]
    _sections(Config, "", sections)
    for key, model in sections:
        doc = inspect.cleandoc(model.__doc__ or "")
        parts += ["", f"## `{key}`" if key else "## top level", "", doc, "", "| key | type | default | meaning |"]
        parts.append("|---|---|---|---|")
        for name, field in model.model_fields.items():
            meaning = comments.get((model.__name__, name), "").replace("|", "\\|")
            type_name = _type_name(field.annotation).replace("|", "\\|")
            parts.append(f"| `{name}` | {type_name} | {_default(field).replace('|', chr(92) + '|')} | {meaning} |")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
