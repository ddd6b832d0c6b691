"""ELVIS Viewer: the Qt application, a thin skin over :mod:`elvis_core`."""
