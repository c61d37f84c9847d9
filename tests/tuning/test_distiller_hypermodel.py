import keras_tuner as kt
import numpy as np
import pytest

import keras_one
from keras_one.tuning import DistillerHyperModel

TINY = dict(model="resnet8", num_classes=4, input_shape=(8, 8, 1))


def best_branch_accuracy(logs, num_branches):
    return max(logs[f"branch_{i}_accuracy"] for i in range(num_branches))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ensemble", "best_branch"])
def test_tiny_search_returns_models_that_predict(
    tiny_data, tmp_path, objective
):
    x, y = tiny_data
    hypermodel = DistillerHyperModel(
        "one", epochs=1, num_branches=(2, 3), objective=objective, **TINY
    )
    metric = f"val_{objective}_accuracy"
    assert hypermodel.objective.name == metric
    tuner = kt.RandomSearch(
        hypermodel,
        objective=hypermodel.objective,
        max_trials=2,
        seed=0,
        directory=tmp_path,
        project_name="tiny",
    )
    tuner.search(
        x, y, validation_data=(x[:48], y[:48]), batch_size=32, verbose=0
    )
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == 2
    assert all(t.status == "COMPLETED" for t in trials)
    for trial in trials:
        # The trial is scored by the objective's metric.
        score = trial.metrics.get_best_value(metric)
        assert trial.score == pytest.approx(score)
        # The best-branch metric is logged too: the best branch, per epoch.
        branches = [
            trial.metrics.get_last_value(f"val_branch_{i}_accuracy")
            for i in range(trial.hyperparameters.get("num_branches"))
        ]
        best = trial.metrics.get_last_value("val_best_branch_accuracy")
        assert best == pytest.approx(max(branches))

    models = tuner.get_best_models(num_models=2)
    best_hps = tuner.get_best_hyperparameters(num_trials=2)
    for model, hp in zip(models, best_hps, strict=True):
        assert isinstance(model, keras_one.Distiller)
        outputs = model.predict(x[:5], verbose=0)
        assert len(outputs["branch_logits"]) == hp.get("num_branches")
        assert outputs["ensemble_logits"].shape == (5, 4)
        assert np.all(np.isfinite(outputs["ensemble_logits"]))
        assert model.method.temperature == pytest.approx(hp.get("temperature"))
    # The models come ranked by the objective, the best checkpoint of each
    # restored: its score on the same data.
    ranked = sorted(trials, key=lambda t: t.score, reverse=True)
    for model, trial in zip(models, ranked, strict=True):
        logs = model.evaluate(
            x[:48], y[:48], batch_size=48, return_dict=True, verbose=0
        )
        if objective == "ensemble":
            score = logs["ensemble_accuracy"]
        else:
            score = best_branch_accuracy(logs, model.num_branches)
        assert score == pytest.approx(trial.score)


def test_build_maps_hyperparameters_onto_method_student_and_optimizer():
    hypermodel = DistillerHyperModel(
        "mde",
        epochs=20,
        num_branches=3,
        temperature=[2.0, 4.0],
        rampup_fraction=0.25,
        learning_rate=(0.05, 0.05),
        weight_decay=5e-4,
        method_hyperparameters={"diversity_weight": (0.1, 2.0, "log")},
        **TINY,
    )
    hp = kt.HyperParameters()
    distiller = hypermodel.build(hp)
    assert isinstance(distiller.method, keras_one.methods.MDE)
    assert distiller.num_branches == 3
    assert distiller.method.temperature == hp.get("temperature")
    assert distiller.method.rampup_epochs == 5  # 0.25 * 20
    assert distiller.method.diversity_weight == pytest.approx(
        hp.get("diversity_weight")
    )
    assert float(distiller.optimizer.learning_rate) == pytest.approx(0.05)
    assert float(distiller.optimizer.momentum) == pytest.approx(0.9)
    # Coupled weight decay: L2(wd / 2) on the convolutions.
    conv = distiller.student.get_layer("stem_conv")
    assert conv.kernel_regularizer.l2 == pytest.approx(2.5e-4)
    assert set(hp.values) == {
        "num_branches",
        "temperature",
        "rampup_fraction",
        "learning_rate",
        "weight_decay",
        "diversity_weight",
    }
    sampling = hp.get_config()["space"]
    diversity = [
        s for s in sampling if s["config"]["name"] == "diversity_weight"
    ]
    assert diversity[0]["config"]["sampling"] == "log"
    # Values the tuner chose that are not the defaults (2.0 and 0.1 above)
    # nor the method's own (3.0 and 1.0) reach the method: a build that
    # ignored either hyperparameter would keep one of those.
    hp.values["temperature"] = 4.0
    hp.values["diversity_weight"] = 0.37
    distiller = hypermodel.build(hp)
    assert distiller.method.temperature == 4.0
    assert distiller.method.diversity_weight == pytest.approx(0.37)


def test_none_leaves_defaults_and_functions_define_anything():
    hypermodel = DistillerHyperModel(
        "one",
        num_branches=None,
        temperature=lambda hp: hp.Choice("T", [5.0]),
        rampup_fraction=None,
        weight_decay=None,
        **TINY,
    )
    hp = kt.HyperParameters()
    distiller = hypermodel.build(hp)
    assert distiller.num_branches == 3  # the builder's default
    # ONE's own ramp-up, 80 of 300 epochs (the hypermodel's default).
    assert distiller.method.rampup_epochs == 80
    assert distiller.method.temperature == 5.0
    assert set(hp.values) == {"T", "learning_rate"}


def test_the_method_description_sets_the_defaults(tiny_data):
    hp = kt.HyperParameters()
    # None: the method's own ramp-up fraction, scaled to `epochs`.
    for name, rampup_epochs in (("one", 8), ("dml", 0)):
        hypermodel = DistillerHyperModel(
            name, epochs=30, num_branches=2, rampup_fraction=None, **TINY
        )
        assert hypermodel.build(hp).method.rampup_epochs == rampup_epochs
    # A fixed ramp-up among the method's options is kept.
    hypermodel = DistillerHyperModel(
        "one",
        epochs=30,
        num_branches=2,
        rampup_fraction=None,
        method_options={"rampup_epochs": 3},
        **TINY,
    )
    assert hypermodel.build(hp).method.rampup_epochs == 3
    # "auto" branches: from the fewest the method accepts, or the
    # method's own choice for a single network or a teacher per branch.
    assert DistillerHyperModel("one").space["num_branches"] == (2, 4)
    assert DistillerHyperModel("okddip").space["num_branches"] == (3, 5)
    teacher = keras_one.models.cifar_resnet(
        depth=8, num_classes=4, num_branches=1, input_shape=(8, 8, 1)
    )
    single = DistillerHyperModel("kd", method_options={"teacher": teacher})
    assert single.space["num_branches"] is None


def test_single_branch_methods_need_the_best_branch_objective(tiny_data):
    x, y = tiny_data
    teacher = keras_one.models.cifar_resnet(
        depth=8, num_classes=4, num_branches=1, input_shape=(8, 8, 1)
    )
    options = dict(method_options={"teacher": teacher}, num_branches=None)
    hypermodel = DistillerHyperModel("kd", epochs=1, **options, **TINY)
    assert hypermodel.method_knobs == {"alpha": 0.9}
    hp = kt.HyperParameters()
    distiller = hypermodel.build(hp)
    with pytest.raises(ValueError, match="objective='best_branch'"):
        hypermodel.fit(hp, distiller, x, y, validation_data=(x, y))
    hypermodel = DistillerHyperModel(
        "kd",
        epochs=1,
        objective="best_branch",
        method_hyperparameters={"alpha": (0.5, 0.9)},
        **options,
        **TINY,
    )
    distiller = hypermodel.build(hp)
    history = hypermodel.fit(
        hp, distiller, x, y, validation_data=(x, y), batch_size=48, verbose=0
    )
    assert history.history["val_best_branch_accuracy"] == pytest.approx(
        history.history["val_accuracy"]
    )


def test_bad_search_spaces_are_explained():
    with pytest.raises(ValueError, match=r"no tunable arguments \['alpha'\]"):
        DistillerHyperModel("one", method_hyperparameters={"alpha": 0.5})
    with pytest.raises(ValueError, match="at least 2 branches"):
        DistillerHyperModel("one", num_branches=(1, 3))
    with pytest.raises(ValueError, match="log sampling needs low > 0"):
        DistillerHyperModel("one", weight_decay=(0.0, 1e-3, "log"))
    with pytest.raises(ValueError, match="search space is"):
        DistillerHyperModel("one", temperature="hot")
    with pytest.raises(ValueError, match="Unknown method"):
        DistillerHyperModel("nope")
    with pytest.raises(TypeError, match="teacher"):
        DistillerHyperModel("kd")
    with pytest.raises(ValueError, match="include 'accuracy'"):
        DistillerHyperModel("one", metrics=["mse"])


def test_a_method_with_example_indices_reads_the_training_data(tiny_data):
    x, y = tiny_data
    train_ds, _, _ = keras_one.data.load_arrays(
        x, y, x[:8], y[:8], batch_size=32, with_index=True
    )
    with pytest.raises(ValueError, match=r"train_ds=train_ds\), loaded with"):
        DistillerHyperModel("mcl_okd", **TINY)
    hypermodel = DistillerHyperModel(
        "mcl_okd",
        num_branches=2,
        train_ds=train_ds,
        method_options={"num_negatives": 8},
        method_hyperparameters={"nce_weight": (0.01, 0.1)},
        **TINY,
    )
    hp = kt.HyperParameters()
    distiller = hypermodel.build(hp)
    method = distiller.method
    assert method.num_examples == len(y) and method.num_negatives == 8
    assert method.nce_weight == pytest.approx(hp.get("nce_weight"))
    np.testing.assert_array_equal(method.bank_labels.numpy(), y)
    # Its student takes each example's index beside the images.
    assert [t.name for t in distiller.student.inputs] == [
        "image",
        "example_index",
    ]
    # A second trial gets fresh banks, from the labels read once.
    assert hypermodel.build(hp).method is not method
