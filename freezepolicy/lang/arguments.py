"""Checks of the arguments of the language's public functions: a wrong type or value is a
`TypeError` / `ValueError` that says what was expected, raised before anything is computed.

`resolve("fc.weight")` used to iterate the characters of the string, and `resolve(epoch=-1)`
answered for a moment that does not exist.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parameter_names(names: Any, where: str) -> tuple[str, ...]:
    """`names` as a tuple of str, or a TypeError naming `where` and what was given."""
    if isinstance(names, (str, bytes)):
        raise TypeError(
            f"{where}: names must be a list of parameter names, got a single"
            f" {type(names).__name__} {_shown(names)}; to use one name, pass [{_shown(names)}]"
        )
    if not isinstance(names, Iterable):
        raise TypeError(
            f"{where}: names must be an iterable of parameter names (str), got"
            f" {type(names).__name__}"
        )
    names = tuple(names)
    if not set(map(type, names)) <= {str}:
        bad = next(n for n in names if not isinstance(n, str))
        raise TypeError(
            f"{where}: every parameter name must be a str, got {type(bad).__name__}"
            f" {_shown(bad)}"
        )
    return names


def _per_name(value: Any, where: str, name: str, what: str) -> Mapping[str, Any] | None:
    """`value` checked to be None or a mapping of parameter names (its values are checked
    where used)."""
    if value is None or isinstance(value, Mapping):
        return value
    raise TypeError(
        f"{where}: {name} must map each parameter name to {what}, got {type(value).__name__}"
    )


def module_type_map(module_types: Any, where: str) -> Mapping[str, Any] | None:
    """`module_types` checked to be None or a mapping (its values are checked where used)."""
    return _per_name(
        module_types, where, "module_types", "the class names of the modules around it"
    )


def class_names_of(name: str, classes: Any, where: str) -> None:
    """A module_types value must be a collection of class names, not one class name."""
    if isinstance(classes, (str, bytes)):
        raise TypeError(
            f"{where}: module_types[{_shown(name)}] must be a collection of class names, got"
            f" the {type(classes).__name__} {_shown(classes)}; write [{_shown(classes)}]"
        )


def shape_map(shapes: Any, where: str) -> Mapping[str, Any] | None:
    """`shapes` checked to be None or a mapping (its values are checked where used)."""
    return _per_name(shapes, where, "shapes", "its shape (a tuple of sizes)")


def shape_of(name: str, shapes: Mapping[str, Any], where: str) -> tuple[int, ...]:
    """The shape of `name` in `shapes`, checked: a sequence of whole numbers (`torch.Size`, a
    tuple or a list); every name bound must have one."""
    shape = shapes.get(name)
    if shape is None:
        raise ValueError(
            f"{where}: no shape for {_shown(name)}: `ndim` selectors need the shape of every"
            " parameter"
        )
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise TypeError(
            f"{where}[{_shown(name)}] must be a shape (a tuple of sizes), got"
            f" {type(shape).__name__} {_shown(shape)}"
        )
    return tuple(shape)


def whole_number(value: Any, what: str, minimum: int) -> int:
    """`value` as an int of at least `minimum` (bools and floats refused), else a clear error."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a whole number, got {value!r}")
    try:
        number = operator.index(value)  # int, numpy and torch integers; never a float
    except TypeError:
        raise TypeError(
            f"{what} must be a whole number, got {_shown(value)} ({type(value).__name__})"
        ) from None
    if number < minimum:
        counting = " (epochs and steps count from 0)" if minimum == 0 else ""
        raise ValueError(f"{what} must be {minimum} or more{counting}, got {number}")
    return number


def moment(epoch: Any, step: Any, steps_per_epoch: Any) -> tuple[int, int, int | None]:
    """A moment of training checked: epoch and step whole numbers >= 0, steps_per_epoch >= 1."""
    spe = None if steps_per_epoch is None else whole_number(steps_per_epoch, "steps_per_epoch", 1)
    return whole_number(epoch, "epoch", 0), whole_number(step, "step", 0), spe
