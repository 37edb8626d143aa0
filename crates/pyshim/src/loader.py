"""Imports the prelude package from sources the vmrig binary holds."""

import importlib.abc
import importlib.machinery
import sys


class _Loader(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    def __init__(self, sources):
        self._sources = sources

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self._sources:
            return None
        package = "." not in fullname
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=package)
        # Tracebacks and linecache show these names (and get_source the lines).
        spec.origin = self._filename(fullname)
        spec.has_location = True
        return spec

    def _filename(self, fullname):
        if "." not in fullname:
            return f"<vmrig>/{fullname}/__init__.py"
        return "<vmrig>/" + fullname.replace(".", "/") + ".py"

    def get_source(self, fullname):
        return self._sources[fullname]

    def get_code(self, fullname):
        return compile(self._sources[fullname], self._filename(fullname), "exec")

    def is_package(self, fullname):
        return "." not in fullname


def install(sources):
    """Makes `import vmrig_prelude` (and its submodules) find `sources`."""
    sys.meta_path.insert(0, _Loader(dict(sources)))
