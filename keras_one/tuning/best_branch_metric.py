import re

import keras


class BestBranchMetric(keras.callbacks.Callback):
    """Logs the best branch's value of a metric at the end of every epoch.

    A `keras_one.Distiller` logs each compiled metric per branch
    (`branch_0_accuracy`, `branch_1_accuracy`, ...) and for the ensemble.
    This callback adds `best_branch_accuracy` (and, with validation data,
    `val_best_branch_accuracy`): the best of the branches at that epoch,
    for a single-branch student its plain `accuracy`. Monitor it with
    `keras.callbacks.EarlyStopping`, `ModelCheckpoint` or keras-tuner to
    select on the deployable single branch rather than on the ensemble.

    Choosing the best of several branches on validation data is itself a
    selection: report the chosen branch's accuracy on separate test data.

    It writes into the epoch's `logs`, so callbacks after it (the progress
    bar, `History`, keras-tuner's) see the new value: put it first in the
    `callbacks` list.

    Args:
        metric: the compiled metric's name, e.g. `"accuracy"`.
        mode: `"max"` when larger is better (accuracies), `"min"` when
            smaller is (errors).

    Example:

    ```python
    distiller.fit(
        train_ds,
        validation_data=test_ds,
        callbacks=[
            BestBranchMetric(),
            keras.callbacks.EarlyStopping("val_best_branch_accuracy",
                                          mode="max", patience=20),
        ],
    )
    ```
    """

    def __init__(self, metric="accuracy", mode="max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}.")
        self.metric = metric
        self.mode = mode

    @property
    def name(self):
        """The logged name, without the `val_` prefix."""
        return f"best_branch_{self.metric}"

    def best_branch(self, logs, prefix=""):
        """The best value among the branches in `logs`, or None.

        Args:
            logs: a dict of epoch logs.
            prefix: `""` for training metrics, `"val_"` for validation ones.
        """
        pattern = re.compile(
            rf"{re.escape(prefix)}branch_\d+_{re.escape(self.metric)}"
        )
        values = [float(v) for k, v in logs.items() if pattern.fullmatch(k)]
        if not values and f"{prefix}{self.metric}" in logs:
            values = [float(logs[f"{prefix}{self.metric}"])]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            value = self.best_branch(logs, prefix)
            if value is not None:
                logs[f"{prefix}{self.name}"] = value
