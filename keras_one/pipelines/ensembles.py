"""Ensemble distillation, self-distillation and Born-Again Networks.

The protocols of Allen-Zhu and Li ("Towards Understanding Ensemble,
Knowledge Distillation and Self-Distillation in Deep Learning", ICLR 2023,
arXiv:2012.09816) and of Furlanello et al. ("Born Again Neural Networks",
ICML 2018, arXiv:1805.04770): networks of one architecture trained one
after the other, each a full training, with the frozen earlier ones as
teachers through `keras_one.methods.KD`.
"""

import keras

from keras_one import recipes
from keras_one.layers.ensemble_average import AVERAGES
from keras_one.layers.ensemble_average import EnsembleAverage
from keras_one.pipelines._stages import Stages
from keras_one.pipelines._stages import Training
from keras_one.pipelines._stages import check_count
from keras_one.pipelines._stages import check_kd

# Each pipeline's defaults, as data (the `keras-one pipeline` command reads
# them): its paper's, or KD's where the paper's were not read.
DEFAULTS = {
    "ensemble_distillation": {
        "members": 10,
        "average": "logits",
        "alpha": 0.9,
        "temperature": 4.0,
    },
    "self_distillation": {"generations": 1, "alpha": 0.9, "temperature": 4.0},
    "born_again": {
        "generations": 3,
        "average": "logits",
        "alpha": 1.0,
        "temperature": 1.0,
    },
}


def ensemble_model(models, average="logits", name="ensemble"):
    """The unweighted average of several models, as one Keras model.

    The models are called on one input; the output is the mean of their
    logits (`average="logits"`) or the logarithm of the mean of their
    softmax probabilities (`average="probabilities"`), see
    `keras_one.layers.EnsembleAverage`. It is a functional model of the
    given models (their weights are shared, not copied) and a built-in
    `keras.Input`; it saves as `.keras` and can teach in
    `keras_one.methods.KD`.

    Args:
        models: at least 2 Keras models with a known input (functional, or
            `Sequential` starting with a `keras.Input`), each returning
            logits of one shape; their names must differ.
        average: `"logits"` or `"probabilities"`.
        name: the model's name.

    Returns:
        A `keras.Model` mapping images to the ensemble's logits.

    Example:

    >>> members = [
    ...     keras.Sequential(
    ...         [keras.Input((4,)), keras.layers.Dense(3)], name=f"net_{i}"
    ...     )
    ...     for i in range(2)
    ... ]
    >>> ensemble = ensemble_model(members)
    >>> tuple(ensemble.output.shape)
    (None, 3)
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(
            f"An ensemble needs at least 2 models; got {len(models)}."
        )
    names = [model.name for model in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"The models of an ensemble need distinct names; {repeated} "
            "is used more than once. Build them with name=... (or set "
            "model.name) before ensembling them."
        )
    for model in models:
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError):
            inputs = outputs = None
        if not inputs or len(inputs) != 1:
            raise ValueError(
                f"Model {model.name!r} has no single known input: ensemble "
                "functional models, or Sequential models that start with "
                "a keras.Input."
            )
        if not outputs or len(outputs) != 1:
            raise ValueError(
                f"Model {model.name!r} must return one tensor of logits; it "
                f"returns {len(outputs or [])} outputs."
            )
    first = models[0].inputs[0]
    inputs = keras.Input(tuple(first.shape[1:]), dtype=first.dtype)
    outputs = EnsembleAverage(average, name="ensemble_logits")(
        [model(inputs) for model in models]
    )
    return keras.Model(inputs, outputs, name=name)


def ensemble_distillation(
    build_model,
    train_ds,
    test_ds,
    epochs,
    directory,
    members=10,
    average="logits",
    alpha=0.9,
    temperature=4.0,
    optimizer=None,
    seed=0,
    callbacks=(),
    verbose="auto",
):
    """Trains an ensemble, then distils it into one network (Allen-Zhu & Li).

    The "ensemble distillation" protocol of Allen-Zhu and Li (ICLR 2023,
    arXiv:2012.09816): `members` networks of one architecture are trained
    on the labels with one recipe, differing only in their seed (member
    `i` is built and trained after `keras.utils.set_random_seed(seed + i)`
    and gets its own epochs of the shuffled data); their ensemble is the
    unweighted average of their outputs (`ensemble_model`), and a fresh
    network of the same architecture (seed `seed + members`) learns from
    the frozen ensemble with `keras_one.methods.KD`. The ensemble runs on
    every training batch of the student (its outputs are not cached, so
    that it sees the student's augmented images).

    Readings where the paper leaves details open:

    - The ensemble averages logits by default: the paper's theory
      averages the networks' functions `F_i`, their logits.
      `average="probabilities"` averages softmax probabilities instead; KD
      then softens the averaged distribution `p` by `T`
      (`softmax(log(p) / T)`), rather than averaging softened members.
    - The paper's `T` and label weight were not read: the defaults are
      KD's (`alpha = 0.9`, `T = 4`).

    Every stage is saved and resumable; see the module docstring.

    Args:
        build_model: a function of no arguments returning a new, untrained
            `keras.Model` that maps images to logits (not probabilities),
            e.g. `lambda: keras_one.models.cifar_resnet(56,
            num_branches=1)`. Called once per stage; the pipeline names
            the model after its stage (`member_0`, ..., `student`).
        train_ds: batched training `tf.data.Dataset` of `(images, labels)`
            (integer labels), shuffling itself, of known length. For a
            resumed run to repeat an uninterrupted one exactly, pass a
            dataset built as a new process builds it: never iterated,
            after the same `keras.utils.set_random_seed`.
        test_ds: batched test dataset, evaluated after each epoch.
        epochs: epochs of every stage.
        directory: the run folder of the pipeline: stages, backups, record.
            Created if needed; call again with it to resume.
        members: networks in the ensemble, at least 2 (default: 10, the
            paper's).
        average: `"logits"` (default) or `"probabilities"`.
        alpha: weight of KD's distillation term (`1 - alpha` weighs the
            label cross-entropy).
        temperature: KD's temperature `T`.
        optimizer: a Keras optimizer, copied (from its config) for every
            stage. `None` (the default): the library's recipe, SGD with
            Nesterov momentum 0.9 and a learning rate of 0.1 decayed to 0
            by a cosine over the stage (`keras_one.experiment.make_sgd`).
        seed: the seed of the first stage.
        callbacks: extra Keras callbacks given to every stage's `fit`.
        verbose: Keras verbosity of `fit`; 0 also silences the pipeline's
            progress lines.

    Returns:
        `(models, accuracy)`: `models["members"]` (a list),
        `models["ensemble"]` (`ensemble_model` of the members) and
        `models["student"]`, all plain Keras models of logits;
        `accuracy` holds their test accuracies under the same keys.

    Example:

    ```python
    train_ds, test_ds, info = keras_one.recipes.load_data(small=True)
    models, accuracy = keras_one.pipelines.ensemble_distillation(
        lambda: keras_one.models.cifar_resnet(
            8, num_classes=10, input_shape=info.input_shape, num_branches=1
        ),
        train_ds, test_ds, epochs=5, directory="ensemble_kd", members=3,
    )
    print(accuracy["ensemble"], accuracy["student"])
    ```
    """
    check_count("members", members, minimum=2)
    check_kd(alpha, temperature)
    _check_average(average)
    names = [f"member_{index}" for index in range(members)] + ["student"]
    settings = {
        "pipeline": "ensemble_distillation",
        "stages": names,
        "average": average,
        "alpha": alpha,
        "temperature": temperature,
    }
    training = Training(
        build_model,
        train_ds,
        test_ds,
        epochs,
        optimizer,
        seed,
        callbacks,
        verbose,
    )
    with Stages(directory, settings, training) as stages:
        trained = [stages.train(name) for name in names[:-1]]

        def ensemble_teacher():
            return ensemble_model(
                [stages.load(name) for name in names[:-1]], average
            )

        student = stages.train(
            "student", ensemble_teacher, alpha=alpha, temperature=temperature
        )
    member_models = [model for model, _ in trained]
    ensemble = ensemble_model(member_models, average)
    models = {
        "members": member_models,
        "ensemble": ensemble,
        "student": student[0],
    }
    accuracy = {
        "members": [scores["accuracy"] for _, scores in trained],
        "ensemble": recipes.accuracy(ensemble, test_ds),
        "student": student[1]["accuracy"],
    }
    return models, accuracy


def self_distillation(
    build_model,
    train_ds,
    test_ds,
    epochs,
    directory,
    generations=1,
    alpha=0.9,
    temperature=4.0,
    optimizer=None,
    seed=0,
    callbacks=(),
    verbose="auto",
):
    """Distils a network into a fresh copy of itself (Allen-Zhu & Li).

    The "self-distillation" protocol of Allen-Zhu and Li (ICLR 2023,
    arXiv:2012.09816): generation 0 is trained on the labels; generation
    `k` (`1 <= k <= generations`) is a network of the same architecture
    from a new random initialization (`keras.utils.set_random_seed(seed +
    k)`), trained with `keras_one.methods.KD` from the frozen generation
    `k - 1`: the same loss as their ensemble distillation. The paper
    distils once (`generations=1`, the default); more generations chain
    the same step, as Born-Again Networks do (`born_again`).

    The paper's `T` and label weight were not read: the defaults are KD's
    (`alpha = 0.9`, `T = 4`).

    Every stage is saved and resumable; see the module docstring.

    Args:
        build_model, train_ds, test_ds, epochs, directory, optimizer, seed,
            callbacks, verbose: as in `ensemble_distillation` (the stages
            are named `generation_0`, `generation_1`, ...).
        generations: distilled generations after the first, at least 1.
        alpha: weight of KD's distillation term.
        temperature: KD's temperature `T`.

    Returns:
        `(models, accuracy)`: `models["generations"]`, the
        `generations + 1` networks (plain Keras models of logits), and
        `accuracy["generations"]`, their test accuracies.

    Example:

    ```python
    models, accuracy = keras_one.pipelines.self_distillation(
        build_model, train_ds, test_ds, epochs=200, directory="sd"
    )
    teacher_accuracy, student_accuracy = accuracy["generations"]
    ```
    """
    models, accuracy = _generations(
        "self_distillation",
        Training(
            build_model,
            train_ds,
            test_ds,
            epochs,
            optimizer,
            seed,
            callbacks,
            verbose,
        ),
        directory,
        generations,
        alpha,
        temperature,
    )
    return models, accuracy


def born_again(
    build_model,
    train_ds,
    test_ds,
    epochs,
    directory,
    generations=3,
    alpha=1.0,
    temperature=1.0,
    average="logits",
    optimizer=None,
    seed=0,
    callbacks=(),
    verbose="auto",
):
    """Born-Again Networks and their ensemble (Furlanello et al., 2018).

    Born-Again Networks (ICML 2018, arXiv:1805.04770): generation 0 is
    trained on the labels; generation `k` (`1 <= k <= generations`) is the
    same architecture from a fresh initialization
    (`keras.utils.set_random_seed(seed + k)`), trained to the frozen
    generation `k - 1`'s softmax. BAN-Ens, the ensemble of the
    generations, averages the born-again generations `1..generations`.

    The loss is `keras_one.methods.KD` with `alpha = 1` and `T = 1`: the
    KL divergence to the teacher's softmax, which has the gradient of
    BAN's cross-entropy to it (they differ by the teacher's entropy, a
    constant).

    Readings where the paper leaves details open (or where it was not
    re-read):

    - No label cross-entropy by default (`alpha = 1`): BAN's loss, as the
      paper states it, is the cross-entropy to the teacher's output only;
      its tables also report a variant with the label loss added (recalled,
      not re-read). Pass `alpha < 1` to add `(1 - alpha) *` the label
      cross-entropy.
    - The ensemble averages the born-again generations, not generation 0
      (the paper's `f^k(x) = 1/k sum_{i=1..k} f(x, theta_i)`, with
      `theta_1` read as the first born-again network), and averages logits
      (`average="probabilities"` averages softmax probabilities). For
      another ensemble, call `ensemble_model` on `models["generations"]`.
    - The paper's variants CWTM (examples weighted by the teacher's
      maximum probability) and DKPP (permuted non-argmax probabilities)
      are not offered.

    Every stage is saved and resumable; see the module docstring.

    Args:
        build_model, train_ds, test_ds, epochs, directory, optimizer, seed,
            callbacks, verbose: as in `ensemble_distillation` (the stages
            are named `generation_0`, `generation_1`, ...).
        generations: born-again generations after the first, at least 1
            (default: 3, BAN-1 to BAN-3 of the paper's CIFAR-100 runs).
        alpha: weight of the distillation term; 1 (the default) for BAN's
            loss without labels.
        temperature: the softmax temperature, 1 in BAN.
        average: how `models["ensemble"]` averages: `"logits"` (default)
            or `"probabilities"`.

    Returns:
        `(models, accuracy)`: `models["generations"]`, the
        `generations + 1` networks (plain Keras models of logits), and
        `models["ensemble"]`, the average of generations 1 and up (`None`
        for a single born-again generation); `accuracy` holds their test
        accuracies under the same keys.

    Example:

    ```python
    models, accuracy = keras_one.pipelines.born_again(
        build_model, train_ds, test_ds, epochs=300, directory="ban"
    )
    print(accuracy["generations"], accuracy["ensemble"])
    ```
    """
    _check_average(average)
    models, accuracy = _generations(
        "born_again",
        Training(
            build_model,
            train_ds,
            test_ds,
            epochs,
            optimizer,
            seed,
            callbacks,
            verbose,
        ),
        directory,
        generations,
        alpha,
        temperature,
        average=average,
    )
    born = models["generations"][1:]
    if len(born) < 2:
        models["ensemble"], accuracy["ensemble"] = None, None
        return models, accuracy
    models["ensemble"] = ensemble_model(born, average)
    accuracy["ensemble"] = recipes.accuracy(models["ensemble"], test_ds)
    return models, accuracy


def _generations(
    pipeline, training, directory, generations, alpha, temperature, **settings
):
    """Generation 0 on labels, then each generation distilled from the last."""
    check_count("generations", generations, minimum=1)
    check_kd(alpha, temperature)
    names = [f"generation_{index}" for index in range(generations + 1)]
    settings = {
        "pipeline": pipeline,
        "stages": names,
        "alpha": alpha,
        "temperature": temperature,
        **settings,
    }
    with Stages(directory, settings, training) as stages:
        trained = [stages.train(names[0])]
        for previous, name in zip(names[:-1], names[1:], strict=True):
            trained.append(
                stages.train(
                    name,
                    lambda previous=previous: stages.load(previous),
                    alpha=alpha,
                    temperature=temperature,
                )
            )
    return (
        {"generations": [model for model, _ in trained]},
        {"generations": [scores["accuracy"] for _, scores in trained]},
    )


def _check_average(average):
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}; got {average!r}.")
