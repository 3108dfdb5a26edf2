"""Only the package list, which pyproject.toml cannot say: `find` sees fedray/'s packages but not
the top-level conf/, which the wheel ships as fedray/conf (pyproject's package-dir) so that an
ordinary, non-editable install composes jobs from any directory."""

from setuptools import find_namespace_packages, find_packages, setup

config_packages = ["fedray.conf", *(f"fedray.conf.{group}" for group in find_namespace_packages(where="conf"))]
setup(packages=find_packages(include=["fedray", "fedray.*"]) + config_packages)
