"""Shadow models: the membership matrix, LoRA fine-tuning of one model, many shadows (local or Ray).

The fine-tuning function is ``shadow.finetune.finetune`` (the package attribute
``shadow.finetune`` is that module); its DP-SGD variant is in ``shadow.dp``, the adapter's
saving, manifest and checks in ``shadow.adapter``. ``shadow`` imports from ``llm_features``
only, never computes features, and does not import torch until a fine-tune runs.
"""

from shadow.adapter import read_manifest, verify_adapter
from shadow.finetune import FinetuneConfig
from shadow.membership import load_membership, membership_matrix, save_membership
from shadow.shadows import shadow_dirs, shadow_seed, train_shadows

__all__ = [
    "FinetuneConfig",
    "load_membership",
    "membership_matrix",
    "read_manifest",
    "save_membership",
    "shadow_dirs",
    "shadow_seed",
    "train_shadows",
    "verify_adapter",
]
