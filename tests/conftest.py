import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


def shared(*parts: str) -> Path:
    """Path into ../shared/data; the test is skipped with a reason when the file is absent (a user's clone)."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"public dataset not available: {p}")
    return p


@pytest.fixture
def workspace(tmp_path):
    from neat_studio.config import Workspace

    return Workspace(tmp_path / "ws").ensure()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised causal LM + small tokenizer with a chat template, built once per session."""
    from neat_studio.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-lm")
