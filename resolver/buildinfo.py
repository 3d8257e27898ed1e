"""Which build of resolverd is running: "compiled" (the hot modules are mypyc extension
modules, setup.py) or "interpreted" (every module is Python source: RESOLVERD_PURE=1, no C
compiler at build time, or an editable install). `resolverctl status` shows it (Build).
"""

from __future__ import annotations

from resolver.dns import wire

COMPILED = "compiled"
INTERPRETED = "interpreted"


def build() -> str:
    """The build of the modules imported now, judged by the DNS wire format module: setup.py
    compiles it whenever it compiles anything."""
    return INTERPRETED if wire.__file__.endswith(".py") else COMPILED
