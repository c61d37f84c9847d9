from keras_one.tuning import BestBranchMetric


def test_best_branch_metric_reads_the_distiller_logs():
    callback = BestBranchMetric()
    logs = {
        "branch_0_accuracy": 0.5,
        "branch_1_accuracy": 0.7,
        "ensemble_accuracy": 0.9,
        "val_branch_0_accuracy": 0.6,
        "val_branch_1_accuracy": 0.4,
        "val_ensemble_accuracy": 0.95,
    }
    callback.on_epoch_end(0, logs)
    assert logs["best_branch_accuracy"] == 0.7
    assert logs["val_best_branch_accuracy"] == 0.6
    single = {"accuracy": 0.3, "val_accuracy": 0.2}
    BestBranchMetric().on_epoch_end(0, single)
    assert single["best_branch_accuracy"] == 0.3
    errors = {"branch_0_mae": 0.3, "branch_1_mae": 0.1}
    BestBranchMetric("mae", mode="min").on_epoch_end(0, errors)
    assert errors["best_branch_mae"] == 0.1
    assert "val_best_branch_mae" not in errors
