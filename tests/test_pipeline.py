"""The three jobs end to end on a tiny model: train shadows, fit the attack, score a target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.cli import main
from experiments.jobs.attack import fit_attack_job
from experiments.jobs.score import score_job
from experiments.jobs.shadows import train_shadows_job
from llm_features.errors import ConfigError, IncompatibleArtifactError, InputDataError, IntegrityError
from llm_features.settings import FeatureSettings
from shadow.finetune import FinetuneConfig, finetune
from shadow.membership import load_membership
from tests.tiny import build_tiny_llama, build_tokenizer, make_corpus, overfit, save_model

TRAINING = FinetuneConfig(epochs=12, lr=5e-3, lora_rank=8, batch_size=8, max_tokens=64, seed=0)
SETTINGS = FeatureSettings(features="loss,reference,min_k,min_k_plus_plus,zlib_ratio,neighbour_gap",
                           neighbours=2, max_tokens=64, batch_size=16)


def write_jsonl(path: Path, texts: list[str], labels: list[int] | None = None) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            record = {"text": text} if labels is None else {"text": text, "label": labels[i]}
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A pretrained tiny base, a target fine-tuned on 16 members, and 4 shadows on a 32-text pool."""
    root = tmp_path_factory.mktemp("pipeline")
    corpus = make_corpus(200, seed=99)
    tokenizer = build_tokenizer(corpus)
    base = build_tiny_llama(tokenizer, seed=1)
    overfit(base, tokenizer, corpus[100:200], steps=40, lr=3e-3)  # a little general pretraining
    base_dir = save_model(base, tokenizer, root / "base")
    pool = write_jsonl(root / "pool.jsonl", corpus[:32])
    members, non_members = corpus[32:48], corpus[48:64]
    finetune(str(base_dir), members, root / "target", TRAINING, progress=False)
    candidates = write_jsonl(root / "candidates.jsonl", members + non_members, [1] * 16 + [0] * 16)
    train_shadows_job(base=str(base_dir), data=str(pool), out=str(root / "shadows"), n_shadows=4,
                      config=TRAINING, seed=0, settings=SETTINGS, dtype="float32")
    return {"root": root, "base": base_dir, "pool": pool, "candidates": candidates, "corpus": corpus}


def test_shadow_table_has_one_labelled_row_per_shadow_and_text(experiment):
    table = pd.read_parquet(experiment["root"] / "shadows" / "features" / "shadows.parquet")
    assert len(table) == 4 * 32
    assert set(table["shadow"]) == {0, 1, 2, 3}
    assert table.groupby("id")["label"].sum().eq(2).all()  # each text IN for exactly K/2 shadows
    assert not table[["loss", "reference", "neighbour_gap"]].isna().any().any()


def test_attack_scores_the_target_well(experiment, capsys):
    root = experiment["root"]
    fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack"), classifier="auto")
    summary = score_job(attack=str(root / "attack"), model=str(experiment["base"]),
                        adapter=str(root / "target"), data=str(experiment["candidates"]),
                        out=str(root / "scores.csv"), dtype="float32")
    assert summary["metrics"]["attack"]["auc"] > 0.8
    scores = pd.read_csv(root / "scores.csv")
    assert len(scores) == 32
    assert scores["membership_probability"].between(0, 1).all()
    # candidates outside the shadow pool: every shadow is an OUT model, so only the offline attacks exist
    assert "lira_online" not in scores.columns and "rmia_online" not in scores.columns
    assert summary["metrics"]["lira_offline"]["auc"] > 0.7
    assert 0.0 <= summary["metrics"]["rmia_offline"]["auc"] <= 1.0


def test_offline_lira_uses_the_shadows_scores_of_each_candidate(experiment):
    """lira_offline of the CSV equals the formula applied to each shadow's loss of each candidate."""
    from attack_models.calibrated import lira_offline
    from llm_features.models import load_model
    from llm_features.scoring import score_texts

    root = experiment["root"]
    if not (root / "attack").exists():
        fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack"))
    score_job(attack=str(root / "attack"), model=str(experiment["base"]), adapter=str(root / "target"),
              data=str(experiment["candidates"]), out=str(root / "offline.csv"), dtype="float32")
    scores = pd.read_csv(root / "offline.csv")
    texts = [json.loads(line)["text"] for line in experiment["candidates"].read_text().splitlines()]
    shadow_losses = []
    for k in range(4):
        shadow = load_model(str(experiment["base"]), adapter=str(root / "shadows" / f"shadow_{k:03d}"), dtype="float32")
        token_scores = score_texts(shadow.model, shadow.tokenizer, texts, batch_size=16, max_tokens=64,
                                   progress=False)
        shadow_losses.append([float(np.mean(s.token_logprobs)) for s in token_scores])
    shadow_losses = np.asarray(shadow_losses)
    # the fixed standard deviation is the attacker's pool's (recorded at fit time), not the candidates'
    meta = json.loads((root / "attack" / "manifest.json").read_text())["metadata"]
    expected = lira_offline(scores["loss"].to_numpy(), shadow_losses, np.zeros_like(shadow_losses, dtype=bool),
                            fixed_std=meta["pooled_out_std"]["loss"])
    np.testing.assert_allclose(scores["lira_offline"].to_numpy(), expected, rtol=1e-4, atol=1e-4)


def test_score_without_calibration_skips_lira(experiment):
    root = experiment["root"]
    fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack-raw"), calibration="none")
    assert main(["score", "--attack", str(root / "attack-raw"), "--model", str(experiment["base"]),
                 "--adapter", str(root / "target"), "--data", str(experiment["candidates"]),
                 "--out", str(root / "plain.csv"), "--dtype", "float32", "--no-calibration"]) == 0
    assert not {"lira_offline", "rmia_offline"} & set(pd.read_csv(root / "plain.csv").columns)


def test_pool_candidates_get_lira_and_rmia(experiment):
    root = experiment["root"]
    pool_texts = experiment["corpus"][:32]
    # the "target" here is shadow 0 itself: its membership is known
    keep, ids = load_membership(root / "shadows")
    candidates = write_jsonl(root / "pool_candidates.jsonl", pool_texts, keep[0].astype(int).tolist())
    fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack_calibrated"), classifier="logistic",
                   calibration="online")
    summary = score_job(attack=str(root / "attack_calibrated"), model=str(experiment["base"]),
                        adapter=str(root / "shadows" / "shadow_000"), data=str(candidates),
                        out=str(root / "pool_scores.csv"), dtype="float32")
    scores = pd.read_csv(root / "pool_scores.csv")
    assert {"lira_online", "lira_offline", "rmia_online"} <= set(scores.columns)
    assert len(ids) == 32 and summary["metrics"]["lira_online"]["auc"] > 0.7


def test_calibrated_attack_refuses_candidates_outside_the_pool(experiment):
    root = experiment["root"]
    if not (root / "attack_calibrated").exists():
        fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack_calibrated"),
                       classifier="logistic", calibration="online")
    with pytest.raises(ConfigError, match="exists only for candidates in the shadow pool"):
        score_job(attack=str(root / "attack_calibrated"), model=str(experiment["base"]),
                  data=str(experiment["candidates"]), out=str(root / "x.csv"), dtype="float32")


def test_score_refuses_a_target_with_another_tokenizer(experiment, tmp_path):
    root = experiment["root"]
    other_tokenizer = build_tokenizer(make_corpus(50, seed=7, min_words=3, max_words=5))
    other = save_model(build_tiny_llama(other_tokenizer), other_tokenizer, tmp_path / "other")
    if not (root / "attack").exists():
        fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack"))
    with pytest.raises(IncompatibleArtifactError, match="another tokenizer"):
        score_job(attack=str(root / "attack"), model=str(other), data=str(experiment["candidates"]),
                  out=str(tmp_path / "s.csv"))
    assert not (tmp_path / "s.csv").exists()


def test_score_refuses_a_tampered_attack(experiment, tmp_path):
    import shutil

    root = experiment["root"]
    if not (root / "attack").exists():
        fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack"))
    tampered = tmp_path / "attack"
    shutil.copytree(root / "attack", tampered)
    model_file = next(p for p in tampered.iterdir() if p.name != "manifest.json")
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        score_job(attack=str(tampered), model=str(experiment["base"]), data=str(experiment["candidates"]),
                  out=str(tmp_path / "s.csv"))


def test_cli_reports_bad_input_in_one_line(experiment, tmp_path, capsys):
    root = experiment["root"]
    assert main(["fit-attack", "--shadows", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "run `shadowmia train-shadows`" in capsys.readouterr().err
    assert main(["fit-attack", "--shadows", str(root / "shadows"), "--out", str(tmp_path / "a"),
                 "--classifier", "svm"]) == 2
    assert "allowed are auto" in capsys.readouterr().err
    assert main(["train-shadows", "--base", str(experiment["base"]), "--data", str(experiment["pool"]),
                 "--n-shadows", "3", "--out", str(tmp_path / "s")]) == 2
    assert "even" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["score", "--attack", str(root / "attack"), "--model", str(experiment["base"]), "--data",
                 str(empty), "--out", str(tmp_path / "s.csv")]) == 2
    assert "holds no texts" in capsys.readouterr().err


def test_offline_calibrated_attack_takes_lira_offline_for_candidates_outside_the_pool(experiment):
    root = experiment["root"]
    result = fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack_offline"), classifier="logistic",
                            calibration="offline")
    manifest = json.loads((root / "attack_offline" / "manifest.json").read_text())
    assert manifest["metadata"]["calibrated"] == ["lira_offline"]
    raw = ["loss", "reference", "min_k", "min_k_plus_plus", "zlib_ratio", "neighbour_gap"]
    # neighbours would cost every shadow a pass per neighbour; cal_reference is exactly cal_loss
    # (the base model's loss is the same under the target and every shadow)
    views = [c for c in raw if c not in ("neighbour_gap", "reference")]
    assert manifest["metadata"]["calibrated_views"] == views
    assert manifest["metadata"]["feature_columns"] == (raw + ["lira_offline", "token_lira", "weighted_token_lira"]
                                                       + [f"cal_{c}" for c in views])
    assert manifest["metadata"]["token_lira"]["pooled_variance"] > 0
    assert len(manifest["metadata"]["token_lira"]["weights"]) > 0
    assert set(manifest["metadata"]["pooled_out_std"]) == set(views)
    assert result["selected"] == "logistic"
    summary = score_job(attack=str(root / "attack_offline"), model=str(experiment["base"]),
                        adapter=str(root / "target"), data=str(experiment["candidates"]),
                        out=str(root / "offline_calibrated.csv"), dtype="float32", calibration=False)
    scores = pd.read_csv(root / "offline_calibrated.csv")
    assert "lira_offline" in scores.columns and not scores["lira_offline"].isna().any()
    assert not scores[[f"cal_{c}" for c in views]].isna().any().any()
    assert summary["metrics"]["attack"]["auc"] > 0.8


def test_fit_attack_refuses_an_unknown_calibration(experiment):
    with pytest.raises(ConfigError, match="allowed are none, offline, online"):
        fit_attack_job(shadows=str(experiment["root"] / "shadows"), out=str(experiment["root"] / "x"),
                       calibration="both")


def test_scores_do_not_depend_on_the_other_candidates_of_the_call(experiment):
    """Members and non-members scored apart get the scores they get together (issue 10): the
    scorer is batch-invariant, and LiRA's variance, the calibrated views' scale and RMIA's
    population come from the attacker's pool."""
    root = experiment["root"]
    fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack_company"), classifier="logistic")
    lines = experiment["candidates"].read_text().splitlines()
    halves = [root / "first.jsonl", root / "second.jsonl"]
    halves[0].write_text("\n".join(lines[:16]) + "\n")
    halves[1].write_text("\n".join(lines[16:]) + "\n")
    common = dict(attack=str(root / "attack_company"), model=str(experiment["base"]), adapter=str(root / "target"),
                  dtype="bfloat16")
    score_job(data=str(experiment["candidates"]), out=str(root / "together.csv"), **common)
    for i, half in enumerate(halves):
        score_job(data=str(half), out=str(root / f"apart_{i}.csv"), **common)
    together = pd.read_csv(root / "together.csv").set_index("id")
    apart = pd.concat([pd.read_csv(root / f"apart_{i}.csv") for i in range(2)]).set_index("id").loc[together.index]
    columns = [c for c in together.columns if c != "label" and together[c].dtype.kind == "f"]
    assert {"lira_offline", "rmia_offline", "membership_probability", "cal_loss", "token_lira"} <= set(columns)
    np.testing.assert_allclose(apart[columns].to_numpy(), together[columns].to_numpy(), atol=1e-3, rtol=0)


def test_nested_training_rows_never_see_the_held_out_shadow(experiment):
    from experiments.jobs.attack import calibrated_training_table

    table = pd.read_parquet(experiment["root"] / "shadows" / "features" / "shadows.parquet")
    views = ["loss", "min_k"]
    first = calibrated_training_table(table, lira=("lira_offline",), views=views, held_out=2)
    changed = table.copy()
    held = changed["shadow"] == 2
    changed.loc[held, "label"] = 1 - changed.loc[held, "label"]
    changed.loc[held, ["loss", "min_k"]] += 5.0
    second = calibrated_training_table(changed, lira=("lira_offline",), views=views, held_out=2)
    rest = (table["shadow"] != 2).to_numpy()
    columns = ["lira_offline", "cal_loss", "cal_min_k"]
    np.testing.assert_allclose(first.loc[rest, columns].to_numpy(), second.loc[rest, columns].to_numpy())


def test_matched_reference_scoring_averages_over_subsets_and_zero_draws_predicts_once(experiment):
    """An offline candidate's probability is the mean over subsets of the shadows sized like the
    training rows' references; with --reference-draws 0 it is the classifier's on the written
    (all-shadow) columns."""
    from attack_models import load_attack

    root = experiment["root"]
    common = dict(model=str(experiment["base"]), adapter=str(root / "target"), data=str(experiment["candidates"]),
                  dtype="float32")
    probabilities = {}
    for draws in (0, 16):
        attack = root / f"attack_draws_{draws}"
        fit_attack_job(shadows=str(root / "shadows"), out=str(attack), classifier="random_forest",
                       reference_draws=draws)
        meta = json.loads((attack / "manifest.json").read_text())["metadata"]
        score_job(attack=str(attack), out=str(root / f"draws_{draws}.csv"), **common)
        scores = pd.read_csv(root / f"draws_{draws}.csv")
        probabilities[draws] = scores["membership_probability"].to_numpy()
        estimator, _ = load_attack(attack)
        once = estimator.predict_proba(scores[meta["feature_columns"]])[:, 1]
        if draws == 0:
            assert meta["matched_references"] is None
            np.testing.assert_allclose(probabilities[0], once)
        else:
            # 4 shadows, each text IN for 2: an OUT row has 1 other OUT shadow, an IN row 2
            assert meta["matched_references"] == {"draws": 16, "out_reference_counts": {"1": 64, "2": 64}}
            assert not np.allclose(probabilities[draws], once)
    # the same forest: only the calibrated inputs differ
    assert np.corrcoef(probabilities[0], probabilities[16])[0, 1] > 0.5


def test_fit_attack_refuses_negative_reference_draws(experiment):
    with pytest.raises(ConfigError, match="--reference-draws -1"):
        fit_attack_job(shadows=str(experiment["root"] / "shadows"), out=str(experiment["root"] / "x"),
                       reference_draws=-1)


def test_a_second_score_of_the_same_candidates_computes_no_forward_pass(experiment, monkeypatch, tmp_path):
    """With the score cache, a rescore (transfer's next variant, a refit) pays no forward pass
    and writes the same scores as an uncached score."""
    import llm_features.cache as cache

    root = experiment["root"]
    fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack_reuse"), classifier="logistic")
    calls = []
    real = cache.score_texts
    monkeypatch.setattr(cache, "score_texts", lambda *a, **k: calls.append(k.get("description")) or real(*a, **k))
    common = dict(attack=str(root / "attack_reuse"), model=str(experiment["base"]), data=str(experiment["candidates"]),
                  adapter=str(root / "target"), dtype="float32")
    monkeypatch.setenv("SHADOWMIA_SCORE_CACHE", "off")
    score_job(out=str(root / "reuse_0.csv"), **common)
    assert len([c for c in calls if c.startswith("candidates, shadow")]) == 4
    calls.clear()
    monkeypatch.setenv("SHADOWMIA_SCORE_CACHE", str(tmp_path / "cache"))
    score_job(out=str(root / "reuse_1.csv"), **common)
    assert len([c for c in calls if c.startswith("candidates, shadow")]) == 4 and "scoring target" in calls
    calls.clear()
    score_job(out=str(root / "reuse_2.csv"), **common)
    assert calls == []
    first = pd.read_csv(root / "reuse_0.csv")
    for again in ("reuse_1.csv", "reuse_2.csv"):
        pd.testing.assert_frame_equal(first, pd.read_csv(root / again))


def test_token_lira_of_a_candidate_is_computed_against_every_shadow(experiment):
    """score's token_lira column: the target's token log-probs of a candidate against all K
    shadows' (every one OUT of a text outside the pool), with the pool's token variance."""
    from attack_models.token_calibration import TokenWeights, token_cells, token_lira, token_z, weighted_token_lira
    from llm_features.models import load_model
    from llm_features.scoring import score_texts

    root = experiment["root"]
    fit_attack_job(shadows=str(root / "shadows"), out=str(root / "attack_tokens"), classifier="logistic")
    meta = json.loads((root / "attack_tokens" / "manifest.json").read_text())["metadata"]
    score_job(attack=str(root / "attack_tokens"), model=str(experiment["base"]), adapter=str(root / "target"),
              data=str(experiment["candidates"]), out=str(root / "tokens.csv"), dtype="float32")
    scores = pd.read_csv(root / "tokens.csv")
    text = experiment["corpus"][32]  # the first candidate
    target = load_model(str(experiment["base"]), adapter=str(root / "target"), dtype="float32")
    x = score_texts(target.model, target.tokenizer, [text], max_tokens=64, progress=False)[0].token_logprobs
    references = []
    for k in range(4):
        shadow = load_model(str(experiment["base"]), adapter=str(root / "shadows" / f"shadow_{k:03d}"), dtype="float32")
        references.append(score_texts(shadow.model, shadow.tokenizer, [text], max_tokens=64,
                                      progress=False)[0].token_logprobs)
    expected = token_lira(x, np.stack(references), pooled_variance=meta["token_lira"]["pooled_variance"])
    assert scores["token_lira"].iloc[0] == pytest.approx(expected, abs=1e-4)
    assert scores["token_lira"].notna().all()
    # weighted_token_lira: the same z, weighed by the cells' weights the attack recorded
    z, mean, std = token_z(x, np.stack(references), pooled_variance=meta["token_lira"]["pooled_variance"])
    weights = TokenWeights.from_list(meta["token_lira"]["weights"])
    assert scores["weighted_token_lira"].iloc[0] == pytest.approx(
        weighted_token_lira(z, token_cells(mean, std), weights), abs=1e-3)
    assert scores["weighted_token_lira"].notna().all()


def test_shadows_without_token_logprobs_are_refit_without_token_lira_and_recomputed_by_train_shadows(
        experiment, tmp_path, caplog):
    import shutil

    old = tmp_path / "shadows"
    shutil.copytree(experiment["root"] / "shadows", old)
    for path in (old / "features").glob("tokens_*.npz"):
        path.unlink()  # features computed by an older version
    fit_attack_job(shadows=str(old), out=str(tmp_path / "attack"), classifier="logistic")
    meta = json.loads((tmp_path / "attack" / "manifest.json").read_text())["metadata"]
    assert meta["token_lira"] is None and "token_lira" not in meta["feature_columns"]
    assert "no token log-probabilities" in caplog.text
    train_shadows_job(base=str(experiment["base"]), data=str(experiment["pool"]), out=str(old), n_shadows=4,
                      config=TRAINING, seed=0, settings=SETTINGS, dtype="float32")
    assert len(list((old / "features").glob("tokens_*.npz"))) == 4


def test_pool_candidates_refuse_token_logprobs_changed_after_the_fit(experiment, tmp_path):
    import shutil

    shadows = tmp_path / "shadows"
    shutil.copytree(experiment["root"] / "shadows", shadows)
    fit_attack_job(shadows=str(shadows), out=str(tmp_path / "attack"), classifier="logistic")
    pool_candidates = write_jsonl(tmp_path / "pool_candidates.jsonl", experiment["corpus"][:8], [1, 0] * 4)
    common = dict(attack=str(tmp_path / "attack"), model=str(experiment["base"]), data=str(pool_candidates),
                  dtype="float32")
    score_job(out=str(tmp_path / "before.csv"), **common)
    assert pd.read_csv(tmp_path / "before.csv")["token_lira"].notna().all()
    path = shadows / "features" / "tokens_001.npz"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="tokens_001.npz is gone or changed"):
        score_job(out=str(tmp_path / "after.csv"), **common)


def test_token_evidence_study_agrees_with_token_lira(experiment):
    """The study's clipped mean at CLIP is token_lira of the held-out shadow against the others."""
    from attack_models.token_calibration import pooled_token_variance, token_lira_rows
    from experiments.jobs.shadows import read_token_logprobs
    from experiments.studies.token_evidence import padded_logprobs, study, summaries, z_scores
    from shadow.membership import load_membership

    shadows = experiment["root"] / "shadows"
    X, mask, keep = padded_logprobs(shadows)
    ids = load_membership(shadows)[1]
    ragged = [read_token_logprobs(shadows / "features" / f"tokens_{k:03d}.npz", ids) for k in range(4)]
    pooled = pooled_token_variance(ragged, keep)
    expected = token_lira_rows(ragged, keep, pooled_variance=pooled)
    for k in range(4):
        got = summaries(*z_scores(X, keep, k, set(), pooled), mask)["clipped_mean_3"].to_numpy()
        np.testing.assert_allclose(got, expected[k], rtol=1e-9, atol=1e-12)
    table = study(shadows)
    assert {"clipped_mean_3", "xgboost on all summaries"} <= set(table["summary"])
    assert table["auc"].between(0, 1).all()


def test_token_evidence_study_adds_calibrated_views(experiment):
    """--features: the held-out shadow's calibrated views are the attack's leave-one-shadow-out
    ones, the other rows are calibrated without it, and an unknown column is a clear error."""
    from attack_models.fusion import calibrate_shadow_table
    from experiments.jobs.shadows import load_shadow_table
    from experiments.studies.token_evidence import calibrated_views, shadow_table_columns, study
    from shadow.membership import load_membership

    shadows = experiment["root"] / "shadows"
    ids = load_membership(shadows)[1]
    table = load_shadow_table(shadows)[0]
    views = calibrated_views(shadow_table_columns(shadows, ["loss"]), ["loss"], ids, held_out=2)
    n = len(ids)
    loso = calibrate_shadow_table(table, ["loss"]).set_index(["shadow", "id"])["cal_loss"]
    nested = calibrate_shadow_table(table, ["loss"], held_out=2).set_index(["shadow", "id"])["cal_loss"]
    np.testing.assert_allclose(views["cal_loss"][2 * n:3 * n], loso.loc[2].loc[ids].to_numpy())
    np.testing.assert_allclose(views["cal_loss"][:n], nested.loc[0].loc[ids].to_numpy())
    assert not np.allclose(views["cal_loss"][:n], loso.loc[0].loc[ids].to_numpy())
    result = study(shadows, ["loss"])
    assert {"cal_loss", "logistic on clipped_mean_3 + views", "xgboost on all summaries + views",
            "xgboost on weighted_token_lira + all summaries + views"} <= set(result["summary"])
    with pytest.raises(InputDataError, match="--features nope: not a column of"):
        study(shadows, ["nope"])


def test_lora_scale_scores_the_fine_tune_at_1_and_the_base_at_0(experiment):
    """The adapter scaled by 1 is the shadow the run scored; scaled by 0 it is the base model."""
    from experiments.jobs.shadows import read_token_logprobs
    from experiments.studies.lora_scale import scaled_logprobs
    from llm_features.models import load_model
    from llm_features.scoring import score_texts
    from llm_features.texts import load_texts

    shadows = experiment["root"] / "shadows"
    ids = load_membership(shadows)[1]
    texts = load_texts(experiment["pool"]).subset(ids).texts
    stored = read_token_logprobs(shadows / "features" / "tokens_001.npz", ids)
    common = dict(max_tokens=SETTINGS.max_tokens, batch_size=SETTINGS.batch_size, dtype="float32")
    at_one = scaled_logprobs(str(experiment["base"]), shadows / "shadow_001", texts, 1.0, **common)
    np.testing.assert_allclose(np.concatenate(at_one), np.concatenate(stored), atol=1e-5)
    base = load_model(str(experiment["base"]), dtype="float32")
    expected = [s.token_logprobs for s in score_texts(base.model, base.tokenizer, texts, progress=False,
                                                      max_tokens=SETTINGS.max_tokens, batch_size=SETTINGS.batch_size)]
    at_zero = scaled_logprobs(str(experiment["base"]), shadows / "shadow_001", texts, 0.0, **common)
    np.testing.assert_allclose(np.concatenate(at_zero), np.concatenate(expected), atol=1e-5)
    at_two = np.concatenate(scaled_logprobs(str(experiment["base"]), shadows / "shadow_001", texts, 2.0, **common))
    assert np.abs(at_two - np.concatenate(stored)).mean() > 1e-2


def test_lora_scale_study_reuses_its_arrays_and_recomputes_stale_ones(experiment, tmp_path, monkeypatch):
    """The study's table against weighted_token_lira; a second run computes no forward pass;
    arrays written for other adapters are recomputed; bad factors and other texts are one-line errors."""
    from experiments.jobs.shadows import read_token_logprobs
    from experiments.studies import lora_scale

    shadows = experiment["root"] / "shadows"
    out = tmp_path / "scaled"
    lora_scale.score_scaled(shadows, experiment["pool"], out, [2.0], dtype="float32")
    table = lora_scale.study(shadows, out, [2.0])
    assert {"weighted_token_lira", "log-probs at alpha 2", "change from alpha 1 to 2",
            "logistic on weighted_token_lira + 2", "xgboost on weighted_token_lira + every factor"} <= set(table["variant"])
    assert table["auc"].between(0, 1).all()
    assert table.set_index("variant").loc["weighted_token_lira", "minus_weighted"] == 0.0
    ids = load_membership(shadows)[1]
    written = np.concatenate(read_token_logprobs(out / "alpha2" / "tokens_000.npz", ids))

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass for arrays already written")

    monkeypatch.setattr(lora_scale, "scaled_logprobs", no_pass)
    lora_scale.score_scaled(shadows, experiment["pool"], out, [2.0], dtype="float32")
    inputs = json.loads((out / "inputs.json").read_text())
    inputs["adapters"][0] = "0" * 64  # as if the shadows had been retrained since
    (out / "inputs.json").write_text(json.dumps(inputs))
    with pytest.raises(AssertionError, match="a forward pass"):
        lora_scale.score_scaled(shadows, experiment["pool"], out, [2.0], dtype="float32")
    monkeypatch.undo()
    lora_scale.score_scaled(shadows, experiment["pool"], out, [2.0], dtype="float32")
    np.testing.assert_array_equal(np.concatenate(read_token_logprobs(out / "alpha2" / "tokens_000.npz", ids)),
                                  written)  # the same scores, recomputed
    with pytest.raises(InputDataError, match="--alphas '0.5,1': give distinct factors other than 1"):
        lora_scale.parse_alphas("0.5,1")
    with pytest.raises(InputDataError, match="--alphas 'x': expected comma-separated numbers"):
        lora_scale.parse_alphas("x")
    other = write_jsonl(tmp_path / "other.jsonl", experiment["corpus"][100:132])
    with pytest.raises(InputDataError, match=r"other\.jsonl: 32 of the run's 32 pool texts are not in it"):
        lora_scale.score_scaled(shadows, other, tmp_path / "elsewhere", [2.0], dtype="float32")
