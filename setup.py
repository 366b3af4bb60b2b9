"""Build of the optional compiled core `mulfree._C` (plain C, no torch headers).

The extension is optional: when no C compiler is available the build warns and the package
still installs; at run time `mulfree.kernels` then says once that it is on the pure-torch path.
"""

import glob
import os

from setuptools import Extension, setup

sources = sorted(glob.glob(os.path.join("csrc", "*.c")))
ext_modules = []
if sources and os.environ.get("MULFREE_NO_EXT", "") != "1":
    ext_modules.append(
        Extension(
            "mulfree._C",
            sources=sources,
            include_dirs=["csrc"],
            extra_compile_args=["-O3", "-std=c11", "-fopenmp", "-fno-strict-aliasing"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
