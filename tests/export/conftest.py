"""The one small trained model every export test uses, trained once per session."""

from __future__ import annotations

import pytest

from tests.export import TinyModel, shared_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return shared_tiny_model(tmp_path_factory)
