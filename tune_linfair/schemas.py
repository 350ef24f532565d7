"""The Parquet tables' schemas: every column of ``trials``, ``groups`` and ``samples`` with
its type and description (the units of :mod:`tune_linfair.trial`: accuracies are fractions,
drops are percent). :mod:`tune_linfair.results` writes and reads them; its ``describe``
renders them for the README. Imports neither torch nor Ray."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

_F = pa.float64()
_I = pa.int64()
_S = pa.string()
_B = pa.bool_()
_T = pa.timestamp("us", tz="UTC")
_IDS = ("run_id", "trial_id")


def _schema(columns: Sequence[tuple[str, pa.DataType, str]]) -> pa.Schema:
    """Build a schema whose fields carry their description; ids are non-nullable."""
    return pa.schema(
        [
            pa.field(name, typ, nullable=name not in _IDS, metadata={"description": doc})
            for name, typ, doc in columns
        ]
    )


TRIALS_SCHEMA: pa.Schema = _schema(
    [
        ("run_id", _S, "sweep identifier (one run directory)"),
        ("trial_id", _S, "trial identifier, unique within the run; also the file name"),
        ("config_id", _S, "configuration (the parameters but the seed); joins configs.config_id"),
        ("stage", _S, "last stage the trial reached: base, linearized or finetuned"),
        ("dataset", _S, "dataset name (digits, synthetic, cifar10, svhn, utkface)"),
        ("model", _S, "model name from the registry (e.g. resnet18)"),
        ("width", _I, "model width multiplier"),
        ("method", _S, "linearization method: snl, deepreduce or random"),
        ("granularity", _S, "granularity of the ReLU masks the method removes"),
        ("mitigation", _S, "fine-tuning mitigation: none, lagrangian, accuracy_gap or group_dro"),
        (
            "mask_mitigation",
            _S,
            "group term of SNL's mask training: none, lagrangian, accuracy_gap",
        ),
        (
            "budget",
            _F,
            "requested ReLU budget: a fraction of relu_total, or a count (1 is one ReLU)",
        ),
        ("relu_count", _I, "ReLUs kept (per image) after linearization"),
        ("relu_total", _I, "ReLUs of the all-ReLU model (per image)"),
        ("relu_fraction", _F, "relu_count / relu_total"),
        (
            "reached_budget",
            _B,
            "SNL: the running ReLU count reached the budget within linearize.max_epochs "
            "(false: the largest masks were kept anyway; null for other methods)",
        ),
        (
            "threshold_count",
            _I,
            "SNL: ReLUs with mask above linearize.threshold when mask training stopped "
            "(null for other methods)",
        ),
        (
            "lin_steps",
            _I,
            "optimizer steps of the linearization (SNL mask training, DeepReDuce "
            "distillation; 0 for random)",
        ),
        ("lin_epochs", _I, "epochs (started) of the linearization's training"),
        ("mu", _F, "multiplier step of the lagrangian mitigation (null for other mitigations)"),
        (
            "epsilon",
            _F,
            "slack of the accuracy_gap constraint, percentage points (null for other mitigations)",
        ),
        ("eta", _F, "group weight step of the group_dro mitigation (null for other mitigations)"),
        ("lr", _F, "fine-tuning learning rate"),
        ("epochs", _I, "fine-tuning epochs"),
        ("seed", _I, "random seed (data split, base model, linearization, fine-tuning)"),
        ("val_accuracy", _F, "global accuracy on validation (fraction in [0, 1])"),
        ("test_accuracy", _F, "global accuracy on test (fraction in [0, 1])"),
        ("val_worst_group_drop", _F, "max over groups of the relative drop on validation (%)"),
        ("test_worst_group_drop", _F, "max over groups of the relative drop on test (%)"),
        ("val_parity_gap", _F, "max_a acc_a - min_a acc_a on validation (fraction)"),
        ("test_parity_gap", _F, "max_a acc_a - min_a acc_a on test (fraction)"),
        ("base_val_accuracy", _F, "validation accuracy of the all-ReLU base model (fraction)"),
        ("base_test_accuracy", _F, "test accuracy of the all-ReLU base model (fraction)"),
        (
            "max_accuracy_drop",
            _F,
            "--max-accuracy-drop of the sweep: allowed validation accuracy loss against the "
            "base model, percentage points (null: unconstrained)",
        ),
        (
            "feasible",
            _B,
            "validation accuracy within max_accuracy_drop points of the base model's (null: "
            "unconstrained or failed); infeasible trials are never pareto",
        ),
        ("weight_distance", _F, "||theta_final - theta_base||_2 over shared weights"),
        ("est_online_latency_s", _F, "estimated online private-inference latency (s)"),
        ("est_online_comm_mb", _F, "estimated online communication (MB)"),
        ("est_offline_storage_mb", _F, "estimated offline garbled-circuit storage (MB)"),
        (
            "est_online_latency_total_s",
            _F,
            "online latency with the network's linear part, where measured (resnet18 32x32)",
        ),
        ("est_online_comm_total_mb", _F, "online communication with the linear part (MB)"),
        (
            "resumed_from_epoch",
            _I,
            "fine-tuning epochs done by the checkpoint the trial resumed from after a worker "
            "or driver was killed (null: it ran straight through; wall_time_s then counts "
            "the last attempt)",
        ),
        ("wall_time_s", _F, "wall-clock time of the trial (s)"),
        (
            "lock_wait_s",
            _F,
            "seconds the trial spent blocked on artifact locks (another trial building its "
            "base or linearized model)",
        ),
        ("node_id", _S, "Ray node the trial ran on"),
        ("device", _S, "torch device the trial ran on (cpu, cuda:0, ...; the one Ray gave it)"),
        ("status", _S, "ok or failed"),
        ("error", _S, "reason of the failure (null when ok)"),
        ("checkpoint_path", _S, "path of the final model checkpoint"),
        ("base_key", _S, "cache key of the base model"),
        ("lin_key", _S, "cache key of the linearized model"),
        ("config_json", _S, "the trial's resolved configuration as JSON"),
        ("finished_at", _T, "when the trial finished (UTC)"),
    ]
)

GROUPS_SCHEMA: pa.Schema = _schema(
    [
        ("run_id", _S, "sweep identifier"),
        ("trial_id", _S, "trial identifier (joins trials.trial_id)"),
        ("stage", _S, "base (all-ReLU model), linearized (right after linearization) or finetuned"),
        ("split", _S, "val or test"),
        ("group", _I, "group id"),
        ("group_name", _S, "group name"),
        ("n", _I, "samples of the group in the split"),
        ("n_train", _I, "training samples of the group (the unbalanced distribution)"),
        ("accuracy", _F, "group accuracy (fraction)"),
        ("base_accuracy", _F, "group accuracy of the base model on the same split (fraction)"),
        ("relative_drop", _F, "100 * (base_accuracy - accuracy) / base_accuracy (%)"),
        ("accuracy_ci_low", _F, "95% Wilson interval of accuracy over the group's samples, low"),
        ("accuracy_ci_high", _F, "95% Wilson interval of accuracy, high (fraction)"),
        ("relative_drop_ci_low", _F, "95% interval of relative_drop (base fixed), low"),
        ("relative_drop_ci_high", _F, "95% interval of relative_drop, high (%)"),
        ("loss", _F, "mean cross-entropy over the group's samples"),
        ("grad_norm", _F, "||grad_theta J(theta; S_a)||_2, J = mean CE over the group"),
        ("hessian_top_eig", _F, "top Hessian eigenvalue of J(theta; S_a) (power iteration)"),
        ("mean_margin", _F, "mean softmax margin p_top1 - p_top2 over the group"),
        (
            "mean_geometric_distance",
            _F,
            "mean first-order boundary distance (z_1 - z_2) / ||grad_x (z_1 - z_2)||",
        ),
    ]
)

SAMPLES_SCHEMA: pa.Schema = _schema(
    [
        ("run_id", _S, "sweep identifier"),
        ("trial_id", _S, "trial identifier (joins trials.trial_id)"),
        ("stage", _S, "base, linearized or finetuned"),
        ("split", _S, "val or test"),
        ("index", _I, "index of the sample in its split"),
        ("group", _I, "group id"),
        ("label", _I, "true class"),
        ("prediction", _I, "predicted class"),
        ("correct", _B, "prediction == label"),
        ("margin", _F, "softmax margin p_top1 - p_top2"),
        ("geometric_distance", _F, "first-order boundary distance (z_1 - z_2) / ||grad_x||"),
    ]
)

STAGES_SCHEMA: pa.Schema = _schema(
    [
        ("run_id", _S, "sweep identifier"),
        (
            "trial_id",
            _S,
            "phase run identifier (base-s0, lin-snl-b0.1-s0, a search trial's id, "
            "diag-<trial_id>); also the file name",
        ),
        ("phase", _S, "the sweep phase that ran it: base, linearize, search, grid or diagnose"),
        ("stage", _S, "what it produced: base, linearized, finetuned or diagnosed"),
        ("seed", _I, "random seed"),
        ("method", _S, "linearization method (linearized and later stages)"),
        ("budget", _F, "requested ReLU budget (linearized and later stages)"),
        ("mask_mitigation", _S, "SNL's group term (linearized and later stages)"),
        ("key", _S, "cache key of the artifact (base, linearized) or the trial id it diagnosed"),
        ("computed", _B, "True when this run computed it, False when the cache already had it"),
        ("wall_time_s", _F, "wall-clock time of the run (s)"),
        ("lock_wait_s", _F, "seconds blocked on artifact locks"),
        ("node_id", _S, "Ray node it ran on"),
        ("device", _S, "torch device it ran on"),
        ("status", _S, "ok or failed"),
        ("error", _S, "reason of the failure (null when ok)"),
        ("finished_at", _T, "when it finished (UTC)"),
    ]
)

TRIALS_COLUMNS: tuple[str, ...] = tuple(TRIALS_SCHEMA.names)
GROUPS_COLUMNS: tuple[str, ...] = tuple(GROUPS_SCHEMA.names)
SAMPLES_COLUMNS: tuple[str, ...] = tuple(SAMPLES_SCHEMA.names)

TABLES: dict[str, pa.Schema] = {
    "trials": TRIALS_SCHEMA,
    "groups": GROUPS_SCHEMA,
    "samples": SAMPLES_SCHEMA,
}
"""The per-trial tables: :func:`tune_linfair.results.write_trial` writes one file to each."""

ALL_TABLES: dict[str, pa.Schema] = {**TABLES, "stages": STAGES_SCHEMA}
"""Every table of a run directory: the per-trial ones and ``stages`` (one row per phase run)."""
STAGES_COLUMNS: tuple[str, ...] = tuple(STAGES_SCHEMA.names)
