"""The membership matrix: exact column sums, balanced rows, seeded, saved with its ids."""

from __future__ import annotations

import numpy as np
import pytest

from llm_features.errors import ConfigError, IntegrityError
from shadow.membership import load_membership, membership_matrix, save_membership


@pytest.mark.parametrize("n_texts,n_shadows", [(2, 2), (7, 4), (101, 8), (1000, 16), (3, 10), (64, 64)])
def test_columns_exact_and_rows_balanced(n_texts, n_shadows):
    keep = membership_matrix(n_texts, n_shadows, seed=5)
    assert keep.dtype == bool and keep.shape == (n_shadows, n_texts)
    assert (keep.sum(axis=0) == n_shadows // 2).all()
    rows = keep.sum(axis=1)
    assert set(rows.tolist()) <= {n_texts // 2, (n_texts + 1) // 2}
    assert rows.min() >= 1


def test_deterministic_by_seed_and_seed_matters():
    a = membership_matrix(200, 8, seed=11)
    b = membership_matrix(200, 8, seed=11)
    c = membership_matrix(200, 8, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_assignment_is_random_not_structured():
    keep = membership_matrix(2000, 4, seed=0)
    # no two shadows are complements or copies of each other: a text is IN for a given
    # pair of shadows with probability 1/6 (1 of the 6 IN-sets of size 2), so ~333 texts
    for j in range(4):
        for k in range(j + 1, 4):
            overlap = (keep[j] & keep[k]).sum()
            assert 250 < overlap < 420
    # every IN-set of size K/2 appears for some text (all 6 pairs)
    patterns = {tuple(col) for col in keep.T}
    assert len(patterns) == 6


@pytest.mark.parametrize("n_shadows", [0, 1, 3, 7, -2])
def test_odd_or_too_few_shadows_rejected(n_shadows):
    with pytest.raises(ConfigError, match="even"):
        membership_matrix(10, n_shadows, seed=0)


@pytest.mark.parametrize("n_texts", [0, 1])
def test_pool_too_small_rejected(n_texts):
    with pytest.raises(ConfigError, match=f"n_texts={n_texts}"):
        membership_matrix(n_texts, 4, seed=0)


def test_non_integer_arguments_rejected():
    with pytest.raises(ConfigError, match="n_texts"):
        membership_matrix(10.0, 4, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        membership_matrix(10, 4, seed=None)


def test_save_and_load_round_trip(tmp_path):
    keep = membership_matrix(9, 4, seed=1)
    ids = [f"id{i}" for i in range(9)]
    save_membership(tmp_path, keep, ids=ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["membership.npy", "membership_ids.json"]
    loaded, loaded_ids = load_membership(tmp_path)
    assert np.array_equal(loaded, keep) and loaded.dtype == bool
    assert loaded_ids == ids


def test_save_rejects_wrong_ids_and_load_rejects_damage(tmp_path):
    keep = membership_matrix(9, 4, seed=1)
    with pytest.raises(ConfigError, match="9 columns but 3"):
        save_membership(tmp_path, keep, ids=["a", "b", "c"])
    with pytest.raises(IntegrityError, match="missing"):
        load_membership(tmp_path)
    save_membership(tmp_path, keep, ids=[str(i) for i in range(9)])
    (tmp_path / "membership_ids.json").write_text('{"ids": ["only-one"]}')
    with pytest.raises(IntegrityError, match="lists 1 ids"):
        load_membership(tmp_path)
