"""Include path of the chdb adapter plugin (its dbt project of macros)."""

import os

PACKAGE_PATH = os.path.dirname(__file__)
