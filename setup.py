"""Only the package list, which pyproject.toml cannot say: `find` sees fedray/'s packages but not
the top-level conf/, which the wheel ships as fedray/conf (pyproject's package-dir) so that an
ordinary, non-editable install composes jobs from any directory."""

from setuptools import find_namespace_packages, find_packages, setup

config_packages = ["fedray.conf", *(f"fedray.conf.{group}" for group in find_namespace_packages(where="conf"))]
# hydra_plugins/ (a namespace package, as Hydra's plugin discovery wants): fedray's launcher, hydra/launcher=fedray_ray.
plugin_packages = find_namespace_packages(include=["hydra_plugins.*"])
setup(packages=find_packages(include=["fedray", "fedray.*"]) + config_packages + plugin_packages)
