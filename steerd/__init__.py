"""steerd: multi-WAN downstream steering over several IPsec tunnels."""

__version__ = "0.1.0"
