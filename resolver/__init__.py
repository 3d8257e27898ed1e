"""resolverd: a forwarding DNS server that routes Microsoft 365 traffic out of the local link."""

__version__ = "0.1.0"
