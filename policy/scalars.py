"""Converters for YAML scalars: each returns the value or raises TypeError/ValueError saying
what was wrong with it (`yamldoc` adds where it was). Used by config and policy fields.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any


def describe(value: object) -> str:
    kinds: dict[type, str] = {dict: "a mapping", list: "a list"}
    return kinds.get(type(value), repr(value))


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {describe(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo}-{hi}")
        return value

    return convert


def number(lo: float, hi: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {describe(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {_num(lo)}-{_num(hi)}")
        return float(value)

    return convert


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {describe(value)}")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {describe(value)}")
    return value


def network(value: Any) -> str:
    return str(ipaddress.ip_network(text(value), strict=False))


def ip(version: int) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        addr = ipaddress.ip_address(text(value))
        if addr.version != version:
            raise ValueError(f"{value!r} is not an IPv{version} address")
        return str(addr)

    return convert
