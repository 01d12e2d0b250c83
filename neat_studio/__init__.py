"""NEAT Studio: negative-prompt-driven alignment of language models (arXiv 2410.12194)."""
import os as _os

# Nothing in this package may reach a model hub at run time.
for _k, _v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
               ("GRADIO_ANALYTICS_ENABLED", "False"), ("TOKENIZERS_PARALLELISM", "false")):
    _os.environ.setdefault(_k, _v)

__version__ = "0.1.0"
