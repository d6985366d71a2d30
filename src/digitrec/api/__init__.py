"""The web service: REST API, web page and docs. Build it with ``create_app``."""

from digitrec.api.app import create_app

__all__ = ["create_app"]
