"""Refuses to build the package without its generated stubs (pyproject.toml has the rest)."""
import os
import sys

from setuptools import setup

if not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   "miseg", "v1", "miseg_pb2.py")):
    sys.exit("miseg/v1/miseg_pb2.py is missing: build the CMake target miseg_python first "
             "(cmake --build build --target miseg_python)")
setup()
