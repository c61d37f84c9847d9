import keras
import numpy as np
import tensorflow as tf

from keras_one import recipes


def test_load_data_small_is_the_bundled_digits():
    train_ds, test_ds, info = recipes.load_data(small=True, batch_size=512)
    images, labels = next(iter(train_ds))
    assert info.name == "digits" and info.num_classes == 10
    # The digits come in small batches whatever the CIFAR batch size.
    assert images.shape == (recipes.SMALL_BATCH_SIZE, 8, 8, 1)
    assert info.train_augmentation is None
    assert sum(int(y.shape[0]) for _, y in test_ds) == info.num_test_examples


def test_step_decay_drops_at_each_milestone_epoch():
    schedule = recipes.step_decay(0.05, [150, 180, 210], steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 1500, 1501, 1801, 2101)]
    np.testing.assert_allclose(rates, [0.05, 0.05, 0.005, 5e-4, 5e-5])
    halving = recipes.step_decay(1e-3, [2], steps_per_epoch=5, factor=0.5)
    np.testing.assert_allclose(
        [float(halving(10)), float(halving(11))], [1e-3, 5e-4], rtol=1e-6
    )


def test_accuracy_of_a_logits_model():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, inputs)  # logits: the inputs themselves
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], "float32")
    y = np.array([0, 1, 1, 1])
    dataset = [(x[:2], y[:2]), (x[2:], y[2:])]
    assert recipes.accuracy(model, dataset) == 0.75
    assert not model.compiled  # evaluated as it is


def test_train_teacher(tiny_data):
    x, y = tiny_data
    info = keras.utils.Config(num_classes=4, input_shape=(8, 8, 1))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    teacher = recipes.train_teacher(
        8,
        data,
        data,
        info,
        epochs=15,
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        verbose=0,
    )
    assert teacher.name == "teacher_resnet8"
    assert tuple(teacher.output.shape) == (None, 4)
    assert recipes.accuracy(teacher, data) > 0.5
