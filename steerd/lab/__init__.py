"""The network-namespace lab: veth stand-ins for tunnels, traffic and impairment."""
