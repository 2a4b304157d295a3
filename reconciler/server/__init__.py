"""The HTTP side of ``reconciler serve``: a Starlette app over the controller.

``app.py`` builds the application; ``guard.py`` turns away requests for another host
or from another site, ``api.py`` is the JSON API, ``hooks.py`` the S3 event webhook,
``metrics.py`` the Prometheus metrics, ``auth.py`` the tokens. The
dashboard's pages sit next to them (``pages.py``, ``sessions.py``, ``charts.py``,
``templates/``, ``static/``) and call the same library functions (:mod:`reconciler.controller.runs`,
:mod:`reconciler.controller`). Nothing in the library imports this package.
"""

from .app import create_app

__all__ = ["create_app"]
