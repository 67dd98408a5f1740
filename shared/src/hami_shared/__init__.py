"""Common library of the HAMi-compatible GPU sharing stack.

It holds the wire formats that tie the services together (node inventory, pod device
lists, bind phase, handshake), the resource names and annotation keys, parsing of
extended-resource quantities, and the shared service plumbing (JSON logging, settings
from flags, environment and config file). Everything here is pure and typed; nothing
does I/O except the logging and settings helpers, which only touch what they are given.
"""

from hami_shared.errors import MalformedInputError

__all__ = ["MalformedInputError"]
