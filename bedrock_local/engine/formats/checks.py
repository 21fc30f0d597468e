"""The field checks the body families share; each raises a FormatError whose message names the field
(`where`) and says what it must be."""

from __future__ import annotations

import math
from typing import Any

from .common import FormatError


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def an_object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be a JSON object, got {type_name(value)}")
    return value


def no_unknown_keys(body: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [key for key in body if key not in allowed]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        raise FormatError(
            f"{where} has unknown or unsupported field(s) {names}; allowed: {', '.join(allowed)}"
        )


def a_string(value: Any, where: str, *, non_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where} must be a string, got {type_name(value)}")
    if non_empty and not value:
        raise FormatError(f"{where} must not be empty")
    return value


def an_integer(value: Any, where: str, low: int, high: int | None) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high):
        return value
    bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
    raise FormatError(f"{where} must be an integer {bounds}, got {show(value)}")


def a_number(value: Any, where: str, low: float, high: float) -> float:
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    ):
        return float(value)
    raise FormatError(f"{where} must be a number between {low:g} and {high:g}, got {show(value)}")


def a_boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise FormatError(f"{where} must be true or false, got {show(value)}")
    return value


def a_list(value: Any, where: str, what: str = "a list") -> list:
    if not isinstance(value, list):
        raise FormatError(f"{where} must be {what}, got {type_name(value)}")
    return value


def at_most(items: list, where: str, max_count: int | None) -> list:
    if max_count is not None and len(items) > max_count:
        raise FormatError(f"{where} may hold at most {max_count} strings, got {len(items)}")
    return items


def strings(value: Any, where: str, max_count: int | None) -> list[str]:
    """A list of non-empty strings (stop sequences)."""
    items = at_most(a_list(value, where, "a list of strings"), where, max_count)
    return [a_string(item, f"{where}[{i}]") for i, item in enumerate(items)]


def one_of(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        names = ", ".join(repr(c) for c in choices)
        raise FormatError(f"{where} must be one of {names}, got {show(value)}")
    return value


def some_of(value: Any, where: str, choices: tuple[str, ...]) -> list[str]:
    """A non-empty list of distinct values out of `choices` (embedding types)."""
    items = a_list(value, where, "a list")
    if not items:
        raise FormatError(f"{where} must hold at least one of {', '.join(repr(c) for c in choices)}")
    picked = [one_of(item, f"{where}[{i}]", choices) for i, item in enumerate(items)]
    for i, item in enumerate(picked):
        if item in picked[:i]:
            raise FormatError(f"{where} names {item!r} twice")
    return picked


def some_messages(value: Any, where: str, *, validated: bool = False) -> list:
    """The `messages` list of a chat body, with at least one message."""
    raw = value if validated else a_list(value, where)
    if not raw:
        raise FormatError(f"{where} must hold at least one message")
    return raw


def chat_turns(raw: list, where: str, *, validated: bool = False):
    """(index, where, message, role) of each chat message, checked as Anthropic Messages and Converse
    both want them: an object of role and content, roles 'user' first and then alternating.
    `validated`: the service model's shape already checked each message's members and role."""
    for i, message in enumerate(raw):
        here = f"{where}.messages[{i}]"
        if not validated:
            message = an_object(message, here)
            no_unknown_keys(message, ("role", "content"), here)
            for key in ("role", "content"):
                if key not in message:
                    raise FormatError(f"{here}.{key} is required")
        role = message["role"]
        if not validated and role not in ("user", "assistant"):
            raise FormatError(f"{here}.role must be 'user' or 'assistant', got {show(role)}")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise FormatError(
                f"{here}.role must be {expected!r}, got {role!r}: messages must start with 'user' "
                "and alternate between 'user' and 'assistant'"
            )
        yield i, here, message, role


def top_k(body: dict, where: str, low: int, high: int, default: int | None, temperature: float) -> int | None:
    """A top_k within bounds, accepted only where it changes nothing for generators that sample
    with temperature and top-p alone: the format's default, or greedy decoding."""
    if "top_k" not in body:
        return None
    value = an_integer(body["top_k"], f"{where}.top_k", low, high)
    if temperature == 0 or value == default:
        return value
    keep = f"leave it out (or give the default, {default})" if default is not None else "leave it out"
    raise FormatError(
        f"{where}.top_k: this server's models sample with temperature and top_p only, so a top_k of "
        f"{value} cannot be honoured; {keep}, or set temperature to 0 (greedy decoding, where top_k "
        "changes nothing)"
    )
