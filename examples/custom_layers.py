"""ONE's layers inside your own functional model.

`BranchSplit` replicates a block into independent branches and
`GatedEnsemble` is ONE's gate; with them any functional model becomes a ONE
network, trained by `keras_one.Distiller` and exported branch by branch as
plain Keras models.

    python examples/custom_layers.py            # digits, 30 epochs (~30 s)
    python examples/custom_layers.py --small    # 1 epoch, for the tests
"""

import argparse

import keras

import keras_one


def build_student(num_classes=10, num_branches=3):
    # === Shared trunk ===
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    shared = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    # === Branches: independent copies of this block ===
    block = keras.Sequential(
        [
            keras.layers.Conv2D(64, 3, strides=2, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes),  # logits, no softmax
        ],
        name="branch_block",
    )
    branch_logits = keras_one.layers.BranchSplit(block, num_branches)(shared)
    # === ONE's gate builds the ensemble teacher from the shared features ===
    ensemble_logits = keras_one.layers.GatedEnsemble(num_branches)(
        shared, branch_logits
    )
    return keras.Model(
        inputs,
        {"branch_logits": branch_logits, "ensemble_logits": ensemble_logits},
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="1 quick epoch")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    epochs = 1 if args.small else args.epochs

    (x_train, y_train), (x_test, y_test) = keras_one.data.load_digits()
    distiller = keras_one.Distiller(
        build_student(),
        keras_one.methods.ONE(rampup_epochs=round(0.27 * epochs)),
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)
    )
    distiller.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=64,
        validation_data=(x_test, y_test),
        verbose=2,
    )
    scores = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    branch = distiller.get_branch_model(0)  # plain Keras: one branch only
    predictions = branch.predict(x_test, verbose=0).argmax(-1)
    print(f"ensemble accuracy {scores['ensemble_accuracy']:.4f}")
    print(f"exported branch 0 accuracy {(predictions == y_test).mean():.4f}")
    print(f"exported branch 0 parameters {branch.count_params()}")


if __name__ == "__main__":
    main()
