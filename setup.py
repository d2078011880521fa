"""Build-time layout (the metadata is in pyproject.toml).

The classifier's C sources stay at the top of the tree (ebpf/), where the tests
and benchmarks compile them; the wheel carries them inside the package as
steerd/ebpf, found by steerd.dataplane.sources.ebpf_dir(). Test apparatus stays
out of the product: steerd.testing and the C harnesses only tests load (*_test.c).
"""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["steerd*"], exclude=["steerd.testing*"]), "steerd.ebpf"],
    package_dir={"steerd.ebpf": "ebpf"},
    package_data={"steerd.ebpf": ["*.c", "*.h"]},
    exclude_package_data={"steerd.ebpf": ["*_test.c"]},
)
