"""The public API of attack_models, and its promise never to import torch."""

from __future__ import annotations

import subprocess
import sys

import attack_models


def test_public_names_resolve():
    for name in attack_models.__all__:
        assert getattr(attack_models, name) is not None, name


def test_import_does_not_pull_torch_or_transformers():
    code = (
        "import sys, attack_models, attack_models.persistence, attack_models.selection\n"
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
