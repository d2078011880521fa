"""Test apparatus: what the tests and benchmarks need beside the product.

Not shipped in the wheel (setup.py leaves it out) and never imported by the
daemon or steerctl. The namespace lab stays in steerd.lab: `make demo` uses it.
"""
