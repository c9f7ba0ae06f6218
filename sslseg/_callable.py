"""Modules that are also the API function of the same name.

``sslseg/__init__.py`` exports ``finetune`` and ``pretrain`` lazily as functions, but importing the submodule of the
same name (``import sslseg.finetune``, done by the CLI and by tests) makes Python replace that package attribute with
the module. Making the module forward calls keeps ``sslseg.finetune(...)`` working in every import order.
"""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Let the module ``module_name`` be called as its function of the same last name."""
    sys.modules[module_name].__class__ = _CallableModule
