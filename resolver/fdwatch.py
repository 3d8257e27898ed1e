"""Stopping an event loop's watch on a file descriptor, for compiled and interpreted callers.

`loop.remove_reader` is typed as returning bool (typeshed), but uvloop's and some other loops'
return None. Code compiled with mypyc checks the declared type of every value it receives, so
`loop.remove_reader(fd)` in a compiled module raises TypeError under uvloop even when the result
is thrown away. This module stays interpreted (setup.py does not compile it): the call and its
result never cross into compiled code.
"""

from __future__ import annotations

import asyncio


def stop_reading(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Stop watching `fd` for reading; nothing happens when it was not watched."""
    loop.remove_reader(fd)
