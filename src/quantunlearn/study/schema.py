"""The config's JSON schema: the hand-written part (``schemas/config.schema.yaml``) completed
from the tables, so that a method, a quantizer, a metric or a hyperparameter is declared once.

Generated: the hyperparameter keys and the study-wide ``unlearn`` settings with their types,
choices, bounds and help texts (the dataclasses of `quantunlearn.unlearning.hyperparameters`:
the groups, `UnlearnSettings`), the method names (METHODS), the quantizer name
pattern (QUANTIZERS) and the utility metric names (METRICS). ``python -m
quantunlearn.study.schema`` prints the whole schema, as committed in
``workflow/schemas/config.schema.json`` (a test checks that the two agree).
"""

from __future__ import annotations

import copy
import json
import typing
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

from quantunlearn.evaluation.metrics import metric_names
from quantunlearn.quantizers import quantizer_pattern
from quantunlearn.unlearning.hyperparameters import GROUPS, Group, UnlearnSettings
from quantunlearn.unlearning.methods import METHODS

SCHEMA_FILE = "config.schema.yaml"


def _scalar(kind: Any) -> dict:
    """The JSON schema of one value of a field's Python type."""
    if typing.get_origin(kind) is Literal:
        return {"enum": list(typing.get_args(kind))}
    if kind == (float | str):
        return {"type": ["number", "string"]}
    if kind == (float | None):
        return {"type": ["number", "null"]}
    return {"type": {float: "number", int: "integer", str: "string", bool: "boolean"}[kind]}


def hyperparameters_schema() -> dict:
    """Every hyperparameter: a value or a non-empty list of values (a grid axis)."""
    properties = {}
    for group in GROUPS:
        types = group.field_types()
        for field in group.fields():
            one = _scalar(types[field.name])
            properties[field.name] = {
                "description": field.metadata["help"],
                "oneOf": [one, {"type": "array", "items": one, "minItems": 1}],
            }
    return {"additionalProperties": False, "properties": properties}


def settings_schema(settings: type[Group]) -> dict:
    """The properties of a dataclass of settings (one value each): type or choices, the
    field's bounds, its help text as the description."""
    types = settings.field_types()
    return {
        f.name: {
            **_scalar(types[f.name]),
            **f.metadata["bounds"],
            "description": f.metadata["help"],
        }
        for f in settings.fields()
    }


@cache
def _config_schema() -> dict:
    text = resources.files("quantunlearn.schemas").joinpath(SCHEMA_FILE).read_text()
    schema = yaml.safe_load(text)
    schema["$defs"]["hyperparameters"] = hyperparameters_schema()
    unlearn = schema["properties"]["unlearn"]["properties"]
    unlearn["methods"]["propertyNames"] = {"enum": list(METHODS)}
    unlearn.update(settings_schema(UnlearnSettings))
    schema["properties"]["quantizers"]["items"]["pattern"] = quantizer_pattern()
    evaluation = schema["properties"]["evaluation"]["properties"]
    utility = metric_names(group="utility")
    evaluation["utility"]["items"] = {"enum": utility}
    evaluation["utility_data"]["properties"] = {
        name: {
            "type": "string",
            "description": f"Hub id, JSON file or local folder of the {name} data.",
        }
        for name in utility
    }
    return schema


def config_schema() -> dict:
    """The complete schema (a copy: callers may change it)."""
    return copy.deepcopy(_config_schema())


def schema_json() -> str:
    """The complete schema as the JSON committed in ``workflow/schemas/config.schema.json``."""
    return json.dumps(config_schema(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(schema_json(), end="")
