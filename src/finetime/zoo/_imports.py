"""Importing the user's own modules named on the command line (``--model module.path:factory``,
``--data torch:module.path:attr``)."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def import_user_module(name: str) -> ModuleType:
    """``importlib.import_module(name)``, the working directory searched too: ``python -m finetime`` puts it on
    ``sys.path`` but the ``finetime`` script does not, and a module of your project, next to where you run the
    command, should be found either way (as ``uvicorn main:app`` finds ``main``). The working directory goes last,
    so that it shadows no installed package."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(name)
