"""Deployments started by the project itself: the embedded one on 127.0.0.1 (``_local``)."""
