"""The one compiled part: the NVDEC session library (csrc/nvdec_session.c), plain C loaded with
ctypes, so it needs no Python headers and one build serves every Python version (abi3 name).
Everything else is declared in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("dali_gop.backends._nvdec_session_lib", ["csrc/nvdec_session.c"],
                             include_dirs=["csrc", "csrc/nvcuvid"],
                             extra_compile_args=["-std=gnu11", "-O2"], libraries=["dl", "pthread"],
                             py_limited_api=True)])
