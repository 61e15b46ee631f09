"""Old name of ``pipeline.child_process``, kept only while ``pipeline.workers`` still imports
from it. Delete this file once it imports ``pipeline.child_process``."""

from pipeline.child_process import IsolatedDecoder, maybe_inject_hang

__all__ = ["IsolatedDecoder", "maybe_inject_hang"]
