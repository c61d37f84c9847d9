import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one import models
from keras_one.methods import MCLOKD

SHAPE = (8, 8, 1)
# 24 examples of 4 classes: 18 negatives for each.
LABELS = np.arange(24) % 4


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_l2norm(x):
    return x / np.sqrt((x**2).sum(axis=-1, keepdims=True))


def np_mcl_okd_loss(labels, logits, embeddings, banks, rows, n_data, T=3.0):
    """MCL-OKD's loss (official mcl/criterion.py, memory.py), per example."""
    n = len(labels)

    def ce(z):
        return -np_log_softmax(z)[np.arange(n), labels]

    log_p = np_log_softmax(np.mean(logits, axis=0) / T)
    log_q = np_log_softmax(logits[-1] / T)
    dot = T * T * np.sum(np.exp(log_p) * (log_p - log_q), axis=1)
    nce = 0.0
    for i in range(len(banks)):
        for j in range(len(banks)):
            if i == j:
                continue
            out = np.exp(
                np.einsum("bkd,bd->bk", banks[i][rows], embeddings[j]) / 0.1
            )
            out = out / (out.mean() * n_data)
            m = out.shape[1] - 1
            log_d1 = np.log(out[:, 0] / (out[:, 0] + m / n_data + 1e-7))
            log_d0 = np.log((m / n_data) / (out[:, 1:] + m / n_data + 1e-7))
            nce = nce - (log_d1 + log_d0.sum(axis=1))
    return {
        "ce": sum(ce(z) for z in logits),
        "dot": dot,
        "nce": 0.025 * nce,
    }


def make_distiller(num_branches=3, **method_kwargs):
    method_kwargs.setdefault("num_negatives", 5)
    method_kwargs.setdefault("seed", 0)
    method = MCLOKD(LABELS, **method_kwargs)
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=SHAPE, num_branches=num_branches
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return distiller


def indexed(x, index=None):
    index = np.arange(len(x)) if index is None else np.asarray(index)
    return {"image": x, "example_index": index.astype("int32")}


def values(variables):
    return [ops.convert_to_numpy(v.value) for v in variables]


def contrast_step(distiller, x, labels, negatives, logits):
    """The method's training-mode call and loss, with fixed negatives.

    The branch logits of the loss are `logits` (the student's own, barely
    trained, differ too little for a sharp test of DOT).
    """
    method = distiller.method
    method.draw_negatives = lambda index, step: ops.convert_to_tensor(
        negatives, "int32"
    )
    outputs = distiller(x, training=False)
    outputs.update(method(x, outputs, training=True))
    outputs["branch_logits"] = [ops.convert_to_tensor(z) for z in logits]
    terms = method.compute_losses(ops.convert_to_tensor(labels), outputs, 0.0)
    return outputs, terms


def test_defaults_are_the_official_codes():
    method = MCLOKD(LABELS)
    assert (method.num_negatives, method.embedding_dim) == (256, 128)
    assert (method.nce_temperature, method.memory_momentum) == (0.1, 0.5)
    assert (method.temperature, method.dot_weight) == (3.0, 1.0)
    assert method.nce_weight == 0.025 and method.num_examples == 24
    info = MCLOKD.info
    assert (info.name, info.branches, info.branch_stage) == ("mcl_okd", 4, 2)
    assert info.example_index and info.head is None
    student = MCLOKD(LABELS).build_student(
        "resnet8", num_classes=4, input_shape=SHAPE
    )
    assert [t.name for t in student.inputs] == ["image", "example_index"]
    assert len(student.output["branch_logits"]) == 4
    # Stem and stage 1 shared, stages 2 and 3 replicated.
    names = [layer.name for layer in student.layers]
    assert "stage1_block1_out" in names and "stage2_block1_out" not in names


@pytest.mark.backend_portable
def test_loss_and_bank_update_match_numpy(tiny_data):
    x, y = tiny_data
    x, labels = x[:6], LABELS[:6]
    distiller = make_distiller(embedding_dim=8, num_negatives=3)
    method = distiller.method
    rng = np.random.default_rng(0)
    banks = [
        np_l2norm(rng.normal(size=(24, 8))).astype("float32") for _ in range(3)
    ]
    for bank, value in zip(method.memory_banks, banks, strict=True):
        bank.assign(value.astype("float32"))
    # Negatives of other classes, fixed: example b's are b+1, b+2, b+3.
    negatives = (np.arange(6)[:, None] + np.arange(1, 4)) % 24
    index = np.array([0, 5, 10, 15, 20, 3])
    inputs = indexed(x, index)
    logits = [rng.normal(size=(6, 4)) * 2 for _ in range(3)]
    outputs, terms = contrast_step(distiller, inputs, labels, negatives, logits)
    features = [
        ops.convert_to_numpy(f).astype("f8") for f in outputs["branch_features"]
    ]
    embeddings = [
        np_l2norm(f @ values([h.kernel])[0] + values([h.bias])[0])
        for f, h in zip(features, method.embedding_heads, strict=True)
    ]
    rows = np.concatenate([index[:, None], negatives], axis=1)
    expected = np_mcl_okd_loss(labels, logits, embeddings, banks, rows, 24)
    assert sorted(terms) == sorted(MCLOKD.loss_names) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(
            ops.convert_to_numpy(terms[name]),
            value,
            rtol=1e-5,
            err_msg=name,
        )
    assert np.all(expected["nce"] > 0)
    # After the loss, each example's row: l2norm(0.5 M[a] + 0.5 e).
    for bank, old, embedding in zip(
        values(method.memory_banks), banks, embeddings, strict=True
    ):
        new = old.copy()
        new[index] = np_l2norm(0.5 * old[index] + 0.5 * embedding)
        np.testing.assert_allclose(bank, new, rtol=1e-5, atol=1e-6)
        untouched = np.setdiff1d(np.arange(24), index)
        np.testing.assert_array_equal(bank[untouched], old[untouched])
    assert int(ops.convert_to_numpy(method.contrast_steps.value)) == 1
    # Evaluation leaves the banks alone and has no contrastive term.
    outputs = distiller(inputs, training=False)
    assert method(inputs, outputs, training=False) == {}
    before = values(method.memory_banks)
    terms = method.compute_losses(ops.convert_to_tensor(labels), outputs, 0.0)
    assert not np.any(ops.convert_to_numpy(terms["nce"]))
    for a, b in zip(before, values(method.memory_banks), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.backend_portable
def test_negatives_are_other_classes_drawn_afresh():
    distiller = make_distiller(num_negatives=18)
    method = distiller.method
    index = ops.convert_to_tensor(np.arange(24), "int32")
    first = ops.convert_to_numpy(method.draw_negatives(index, 0))
    again = ops.convert_to_numpy(method.draw_negatives(index, 0))
    later = ops.convert_to_numpy(method.draw_negatives(index, 1))
    np.testing.assert_array_equal(first, again)  # a function of the step
    assert not np.array_equal(np.sort(first), later)  # drawn in another order
    for b in range(24):
        # All 18 examples of the other 3 classes, each once.
        expected = np.flatnonzero(LABELS != LABELS[b])
        np.testing.assert_array_equal(np.sort(first[b]), expected)
    few = make_distiller(num_negatives=4).method
    draws = [ops.convert_to_numpy(few.draw_negatives(index, s)) for s in (0, 1)]
    assert not np.array_equal(draws[0], draws[1])
    for draw in draws:
        assert all(len(set(row)) == 4 for row in draw)
        assert np.all(LABELS[draw] != LABELS[:, None])


def test_fit_save_load_and_export(tiny_data, tmp_path):
    x, y = tiny_data
    x, y = x[:24], LABELS
    distiller = make_distiller()
    method = distiller.method
    history = distiller.fit(indexed(x), y, epochs=4, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    assert history.history["nce"][0] > 0
    assert int(method.contrast_steps.numpy()) == 4 * 3
    # The deployed student: the last branch, from the image alone.
    deployed = method.get_deployed_model()
    assert [t.name for t in deployed.inputs] == ["image"]
    predicted = distiller.predict(indexed(x), verbose=0)
    np.testing.assert_allclose(
        deployed.predict(x, verbose=0),
        predicted["branch_logits"][-1],
        rtol=1e-5,
        atol=1e-5,
    )
    assert all(
        type(layer).__module__.startswith("keras.") for layer in deployed.layers
    )
    distiller.save(tmp_path / "mcl_okd.keras")
    loaded = keras.saving.load_model(tmp_path / "mcl_okd.keras", safe_mode=True)
    restored = loaded.method
    assert restored.get_config() == method.get_config()
    for a, b in zip(
        values(method.memory_banks + [method.bank_labels]),
        values(restored.memory_banks + [restored.bank_labels]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(values([restored.bank_labels])[0], LABELS)
    assert int(restored.contrast_steps.numpy()) == 12
    np.testing.assert_allclose(
        restored.get_deployed_model().predict(x, verbose=0),
        deployed.predict(x, verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )


def test_indexed_data_keeps_each_examples_index(tiny_data):
    x, y = tiny_data
    train_ds, test_ds, _ = keras_one.data.load_arrays(
        x,
        y,
        x[:10],
        y[:10],
        batch_size=16,
        augment=False,
        seed=0,
        normalize=False,
        with_index=True,
    )
    orders = []
    for _ in range(2):
        seen = []
        for inputs, labels in train_ds.as_numpy_iterator():
            index = inputs["example_index"]
            np.testing.assert_array_equal(inputs["image"], x[index])
            np.testing.assert_array_equal(labels, y[index])
            seen.extend(index)
        assert sorted(seen) == list(range(96))
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled, same indices
    np.testing.assert_array_equal(keras_one.data.example_labels(train_ds), y)
    inputs, _ = next(iter(test_ds))
    np.testing.assert_array_equal(inputs["example_index"], np.arange(10))


def test_bad_inputs_are_refused(tiny_data):
    x, y = tiny_data

    def refused(error, message, function):
        with pytest.raises(error, match=message) as caught:
            function()
        assert "\n" not in str(caught.value).strip()

    refused(ValueError, "class of every training example", MCLOKD)
    refused(ValueError, "num_examples=5 but", lambda: MCLOKD(LABELS, 5))
    student = MCLOKD(LABELS).build_student(
        "resnet8", num_classes=4, input_shape=SHAPE, num_branches=2
    )
    refused(
        ValueError,
        "num_negatives=19 is more than the 18 negatives",
        lambda: keras_one.Distiller(student, MCLOKD(LABELS, num_negatives=19)),
    )
    refused(
        ValueError,
        r"example_labels must lie in \[0, 4\)",
        lambda: keras_one.Distiller(student, MCLOKD(LABELS + 1)),
    )
    plain = models.cifar_resnet(
        8, num_classes=4, input_shape=SHAPE, num_branches=2, head=None
    )
    refused(
        ValueError,
        "second student input named 'example_index'",
        lambda: keras_one.Distiller(plain, MCLOKD(LABELS)),
    )
    refused(
        ValueError,
        "with_index=True gives one image per example",
        lambda: keras_one.data.load("digits", with_index=True, views=2),
    )
    refused(
        ValueError,
        "carry no index",
        lambda: keras_one.data.example_labels(
            keras_one.data.load_arrays(x, y, x, y, batch_size=32)[0]
        ),
    )
    distiller = make_distiller(num_branches=2)
    # Images without their indices: the error names the data option that
    # gives them (not PCL's views), on one line.
    for given in (x, {"image": x}):
        refused(
            ValueError,
            r"given 1: MCLOKD keeps state per training example, so load the "
            r"data with keras_one\.data\.load\(\.\.\., with_index=True\)",
            lambda given=given: distiller.fit(
                given, y, epochs=1, batch_size=32, verbose=0
            ),
        )
    with pytest.raises(ValueError, match="with_index=True"):
        distiller.predict(x, verbose=0)
    # Indices beyond the banks: data of 96 examples, labels of 24.
    with pytest.raises(Exception, match="banks have 24 rows"):
        distiller.fit(indexed(x), y, epochs=1, batch_size=96, verbose=0)
