"""Names vulture cannot see being used (make lint runs vulture at 80% confidence).

Each entry says why it is not dead.
"""

from resolver.config import LogLevel, parse_config
from resolver.hooks import pack_addresses

LogLevel.ERROR  # a log level users write in the config; read through LogLevel(value)
parse_config  # the config from Python data: tests, the namespace driver
pack_addresses  # the format Tagged.addresses documents; the tests build answers with it
