"""Test-wide settings: Qt offscreen, no network for model hubs, deterministic seeds."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `elvis train` / `elvis import` export each new checkpoint to ONNX (20-60 s); the suite's many tiny checkpoints are
# never viewed: tests/core/test_onnx_engine.py tests the export and this hook
os.environ.setdefault("ELVIS_ONNX_EXPORT", "0")


def pytest_unconfigure(config):
    """torch registers atexit loggers (FakeTensor / dynamo cache stats) that write at interpreter exit through
    handlers bound to stderr streams pytest has already closed: don't print a "Logging error" trace for each."""
    import logging

    logging.raiseExceptions = False
