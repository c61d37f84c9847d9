import keras
import pytest

from keras_one.graph import find_producer

pytestmark = pytest.mark.backend_portable


def test_finds_the_layer_the_input_layer_and_an_ops_call():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, name="dense")
    hidden = dense(inputs)
    mean = keras.ops.mean(hidden, axis=-1)
    model = keras.Model(inputs, [hidden, mean])
    assert find_producer(hidden, model) is dense
    assert isinstance(find_producer(inputs, model), keras.layers.InputLayer)
    producer = find_producer(mean, model)
    assert isinstance(producer, keras.Operation)
    assert not isinstance(producer, keras.Layer)


def test_finds_each_output_of_a_multi_output_layer():
    class Halves(keras.Layer):
        def call(self, x):
            return x[:, :2], x[:, 2:]

        def compute_output_shape(self, input_shape):
            half = (input_shape[0], 2)
            return half, half

    inputs = keras.Input((4,))
    halves = Halves(name="halves")
    first, second = halves(inputs)
    model = keras.Model(inputs, [first, second])
    assert find_producer(first, model) is halves
    assert find_producer(second, model) is halves


def test_searches_sequential_and_nested_models():
    sequential = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(2, name="logits")]
    )
    assert find_producer(sequential.outputs[0], sequential).name == "logits"

    inner_inputs = keras.Input((4,))
    inner_dense = keras.layers.Dense(2, name="inner_dense")
    inner = keras.Model(inner_inputs, inner_dense(inner_inputs))
    stack = keras.Sequential([keras.layers.Dense(2)], name="stack")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [inner(inputs), stack(inputs)])
    # A tensor inside a nested functional model: found there.
    assert find_producer(inner.output, model) is inner_dense
    # A nested Sequential's first call: the Sequential.
    assert find_producer(model.outputs[1], model) is stack
    # A nested functional model's output in the outer graph is not public.
    assert find_producer(model.outputs[0], model) is None


def test_unknown_for_a_shared_layers_second_call_or_a_foreign_tensor():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    first = shared(inputs)
    second = shared(first)
    model = keras.Model(inputs, second)
    assert find_producer(first, model) is shared
    assert find_producer(second, model) is None
    assert find_producer(keras.Input((4,)), model) is None
