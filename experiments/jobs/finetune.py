"""``shadowmia finetune``: a LoRA fine-tune of a base model on every text of a file."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from llm_features.texts import load_texts

if TYPE_CHECKING:
    from shadow.finetune import FinetuneConfig

logger = logging.getLogger(__name__)


def finetune_job(*, base: str, data: str, out: str, config: FinetuneConfig, text_field: str = "text",
                 device: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """``shadowmia finetune``: a LoRA fine-tune of ``base`` on every text of ``data``."""
    from shadow.finetune import finetune

    texts = load_texts(data, text_field=text_field)
    return finetune(base, texts.texts, out, config, device=device, overwrite=overwrite)
