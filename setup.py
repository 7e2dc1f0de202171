"""The package list, which pyproject.toml cannot express: every package found below clipsonic/
plus the two folders at the top of the repository that travel inside it (see pyproject.toml)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["clipsonic", "clipsonic.*"]) + ["clipsonic.csrc", "clipsonic.weights"])
