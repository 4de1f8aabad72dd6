"""Attack models of shadowmia: classifiers, calibrated per-text attacks, metrics, persistence.

This layer sees only numpy arrays and pandas tables -- never torch models -- and imports
neither torch nor transformers. It depends on ``llm_features`` only for the exception
family and the atomic-file helpers.

* :mod:`attack_models.metrics`: ROC, AUC, TPR at low FPR, stratified bootstrap CIs.
* :mod:`attack_models.classifiers`: scikit-learn attack classifiers and their registry.
* :mod:`attack_models.selection`: leave-one-shadow-out comparison and choice.
* :mod:`attack_models.calibrated`: LiRA (online/offline) and RMIA per-text scores.
* :mod:`attack_models.persistence`: save/load with checksums and a type allowlist.
* :mod:`attack_models.privacy_bounds`: epsilon lower bounds for DP auditing (classic, one-run, f-DP one-run).
"""

from attack_models.calibrated import (
    CALIBRATED_METHODS,
    LiraStatistics,
    leave_one_shadow_out_calibrated,
    lira_offline,
    lira_online,
    lira_statistics,
    logit_scale,
    offline_z,
    pooled_out_std,
    rmia,
    shadows_excluded_calibrated,
    tune_rmia_a,
)
from attack_models.classifiers import (
    CLASSIFIERS,
    LogisticAttack,
    MLPAttack,
    RandomForestAttack,
    ThresholdAttack,
    XGBoostAttack,
    impute_nan,
    make_classifier,
)
from attack_models.metrics import (
    balanced_accuracy,
    bootstrap_ci,
    paired_difference,
    partial_auc,
    roc_auc,
    roc_curve,
    summarize,
    tpr_at_fpr,
    tpr_key,
)
from attack_models.persistence import ALLOWED_TYPES, UntrustedArtifactError, load_attack, save_attack
from attack_models.privacy_bounds import (
    ClassicAudit,
    FdpAudit,
    OneRunAudit,
    classic_epsilon_bound,
    classic_epsilon_from_counts,
    clopper_pearson,
    default_guess_grid,
    fdp_epsilon_bound,
    gdp_epsilon,
    gdp_mu_from_counts,
    one_run_epsilon_bound,
    one_run_epsilon_from_counts,
    one_run_p_value,
)
from attack_models.selection import leave_one_shadow_out, leave_one_shadow_out_folds, select_best

__all__ = [
    "ALLOWED_TYPES",
    "CALIBRATED_METHODS",
    "CLASSIFIERS",
    "ClassicAudit",
    "FdpAudit",
    "LiraStatistics",
    "LogisticAttack",
    "MLPAttack",
    "OneRunAudit",
    "RandomForestAttack",
    "ThresholdAttack",
    "UntrustedArtifactError",
    "XGBoostAttack",
    "balanced_accuracy",
    "bootstrap_ci",
    "classic_epsilon_bound",
    "classic_epsilon_from_counts",
    "clopper_pearson",
    "default_guess_grid",
    "fdp_epsilon_bound",
    "gdp_epsilon",
    "gdp_mu_from_counts",
    "impute_nan",
    "leave_one_shadow_out",
    "leave_one_shadow_out_calibrated",
    "leave_one_shadow_out_folds",
    "lira_offline",
    "lira_online",
    "lira_statistics",
    "load_attack",
    "logit_scale",
    "make_classifier",
    "offline_z",
    "one_run_epsilon_bound",
    "one_run_epsilon_from_counts",
    "one_run_p_value",
    "paired_difference",
    "partial_auc",
    "pooled_out_std",
    "rmia",
    "roc_auc",
    "roc_curve",
    "save_attack",
    "select_best",
    "shadows_excluded_calibrated",
    "summarize",
    "tpr_at_fpr",
    "tpr_key",
    "tune_rmia_a",
]
