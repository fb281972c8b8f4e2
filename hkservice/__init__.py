"""hk housekeeping service: runs post-job cleanup per node, releases and drains nodes."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
