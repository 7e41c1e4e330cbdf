"""The one build step pyproject.toml cannot declare yet (setuptools calls its ext-modules table
experimental): the C part of the bulk pgoutput decoder. A C compiler and Python's headers are
build prerequisites, as they are for any package with an extension built from source."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bankde.cdc._tuples",
            ["src/bankde/cdc/_tuples.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror"],
        )
    ]
)
