"""Slow, obvious implementations that the fast code is tested against."""

from __future__ import annotations

import numpy as np
import torch

from llm_features.scoring import TokenScores


def score_one_by_one(model, tokenizer, texts, *, max_tokens=512) -> list[TokenScores]:
    """One text at a time, float64 statistics, a Python loop over positions."""
    results = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"][:max_tokens]
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            lp, mu, sd, rk = [], [], [], []
            for t in range(len(ids) - 1):
                row = torch.log_softmax(logits[t], dim=-1)
                p = row.exp()
                actual = row[ids[t + 1]]
                mean = float((p * row).sum())
                lp.append(float(actual))
                mu.append(mean)
                sd.append(float(((p * (row - mean) ** 2).sum()).sqrt()))
                rk.append(int((row > actual).sum()))
            results.append(TokenScores(
                token_logprobs=np.array(lp), vocab_mean=np.array(mu), vocab_std=np.array(sd),
                token_ranks=np.array(rk), n_tokens=len(ids),
            ))
    return results
