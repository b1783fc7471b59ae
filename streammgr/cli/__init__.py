"""The command line: ``streammgr serve``, ``streammgr simulate``, ``streammgr demo``,
``streammgr top`` (extra ``cli``; ``serve`` and ``simulate`` need the ``server`` extra
too, ``top`` the ``top`` extra).

Only this package imports the CLI toolkit (cyclopts) and the terminal one (Textual),
and configures logging: the library never does. The guide: docs/cli.md.
"""

from ._app import app as app
from ._app import main as main

__all__ = ["app", "main"]
