"""Packaging for orch_v2: one module, its OpenAPI file, and the orch-v2 command."""

import re

from setuptools import setup

with open("orch_v2.py", encoding="utf-8") as source:
    version = re.search(r'^__version__ = "([^"]+)"', source.read(), re.M).group(1)

with open("README.md", encoding="utf-8") as readme:
    long_description = readme.read()

setup(
    name="orch_v2",
    version=version,
    description="orchestrator's API v2, served read-only from orchestrator's own backend",
    long_description=long_description,
    long_description_content_type="text/markdown",
    py_modules=["orch_v2"],
    data_files=[("share/orch_v2", ["openapi.yaml"])],
    python_requires=">=3.8",
    # The standard library serves SQLite backends; PyMySQL is needed only for MySQL/MariaDB (and ProxySQL).
    install_requires=[],
    extras_require={
        "mysql": ["PyMySQL>=1.1"],
        "test": [
            "PyMySQL>=1.1",
            "pytest>=7",
            "PyYAML>=6",
            "openapi-spec-validator>=0.7",
            "openapi-schema-validator>=0.6",
            "schemathesis>=4.0",
            "trustme>=1.0",
        ],
    },
    entry_points={"console_scripts": ["orch-v2=orch_v2:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Database",
        "Topic :: System :: Monitoring",
    ],
)
