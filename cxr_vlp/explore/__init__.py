"""The interactive explorer: a local web page to query a trained model (``python -m cxr_vlp.explore``).

:class:`~cxr_vlp.explore.session.ExploreSession` answers image and text queries over one embedded split,
:mod:`cxr_vlp.explore.server` serves the page and its JSON API on the standard library's HTTP server, and
:func:`~cxr_vlp.explore.export.export_static` writes a self-contained page of example queries.
"""

from cxr_vlp.explore.build import load_session
from cxr_vlp.explore.export import export_static
from cxr_vlp.explore.negation import negated
from cxr_vlp.explore.server import ExplorerServer, make_server
from cxr_vlp.explore.session import ExploreSession, QueryError

__all__ = ["ExploreSession", "ExplorerServer", "QueryError", "export_static", "load_session", "make_server", "negated"]
