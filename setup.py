"""The optional C helper dagsync._fastio (metadata lives in pyproject.toml).

`optional=True`: where it cannot be compiled (no compiler or Python headers), the
install goes on and dagsync uses its pure-Python loops instead (dagsync/bulkio.py).
-g0: debug info would record the build directory's path in the .so (and the .deb's
relocation check refuses files that name it).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("dagsync._fastio", ["dagsync/_fastio.c"], optional=True,
                             extra_compile_args=["-O2", "-g0"])])
