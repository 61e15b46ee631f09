"""Fixtures shared with the pipeline tests (defined in ``tests/pipeline/conftest.py``)."""

from tests.pipeline.conftest import s3_server, unused_port  # noqa: F401 (fixtures)
