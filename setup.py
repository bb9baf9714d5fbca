"""Build hook for nacz's optional C kernels (everything else is in pyproject.toml).

csrc/ssm.c is compiled into ``nacz/_ssm_native<EXT_SUFFIX>``, a plain shared library that
nacz/native.py loads with ctypes (it is not a Python extension module). The build is
optional: without a working C compiler the install still succeeds and nacz uses the
bit-identical numba kernels instead.

The compiler flags are part of the numerics; they live in nacz/cflags.py (shared with
nacz/native.py), read here without importing nacz.
"""

import os
import runpy

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_FLAGS = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "nacz",
                                      "cflags.py"))
GCC_FLAGS, MSVC_FLAGS = list(_FLAGS["GCC_FLAGS"]), list(_FLAGS["MSVC_FLAGS"])


class OptionalBuildExt(build_ext):
    """build_ext that sets the numerics flags and never fails the install."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler at all (e.g. DistutilsPlatformError)
            self._skip(e)

    def build_extension(self, ext):
        msvc = self.compiler.compiler_type == "msvc"
        ext.extra_compile_args = list(MSVC_FLAGS if msvc else GCC_FLAGS)
        try:
            super().build_extension(ext)
        except Exception as e:  # CompileError, LinkError, missing compiler binary, ...
            self._skip(e)

    def get_export_symbols(self, ext):
        return []  # a ctypes library: no PyInit_ symbol to export

    def _skip(self, e):
        self.warn(f"nacz: the optional C kernels were not built ({e}); "
                  "the numba implementation will be used")


setup(
    ext_modules=[Extension(
        "nacz._ssm_native",
        sources=["csrc/ssm.c"],
        libraries=[] if os.name == "nt" else ["m"],
        optional=True,
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
