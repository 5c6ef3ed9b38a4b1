"""How a value reads in a message: one spelling on every path (the stream, both APIs, every
cloud handler, the batch quarantine), so the same bad value gets the same words everywhere."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np


def shown(value: Any) -> str:
    """A value as received, for a message: one spelling whatever the path (numpy's scalars read
    as Python's, long values cut)."""
    if isinstance(value, (bool, np.bool_)):
        text = repr(bool(value))
    elif isinstance(value, numbers.Integral):
        text = text_of(int(value))
    elif isinstance(value, numbers.Real):
        text = repr(float(value))
    else:
        text = repr(str(value)) if isinstance(value, str) else text_of(value, repr)
    return text if len(text) <= 80 else text[:77] + "..."


def text_of(value: Any, spell: Callable[[Any], str] = str) -> str:
    """`spell(value)`; an int past Python's int-to-str limit (JSON cannot bring one) as its type."""
    try:
        return spell(value)
    except ValueError:
        return f"<{type(value).__name__} too long to show>"


def shown_number(number: float) -> str:
    """A parsed number for a message: 600, 600.0 and "600" all read 600."""
    if math.isfinite(number) and number == int(number) and abs(number) < 1e16:
        return str(int(number))
    return repr(number)


def listed(categories: frozenset[int | str]) -> list[int | str]:
    return sorted(categories, key=lambda value: (isinstance(value, str), value))
