import dataclasses

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a `keras_one.data` loader knows about the dataset it loaded.

    Returned as the third item of `keras_one.data.load(...)` (and of the
    specific loaders). Use it to build the student
    (`num_classes`, `input_shape`), to set schedules (`num_train_examples`)
    and to feed raw images to an exported model (`normalization_layer()`).

    Args:
        name: the dataset's name (tfds name, folder or file name).
        num_classes: number of classes: the model's outputs. Every label
            of the pipelines is below it, and it equals
            `len(class_names)`.
        input_shape: `(height, width, channels)` of the pipeline's images.
        class_names: one name per class, in label order.
        num_train_examples: size of the training split, or `None` if
            unknown.
        num_test_examples: size of the test split, or `None` if unknown.
        mean: per-channel mean the pipelines subtract, in [0, 1] pixel
            units, or `None` when they do not normalize.
        std: per-channel standard deviation they divide by, or `None`.
        train_augmentation: the augmentation policy of the training
            pipeline (`"pad_crop_flip"`, ...), or `None`.
        preprocessing: what the test pipeline does to the dataset's raw
            images before the network, as a JSON-serializable dict (see
            `keras_one.data.preprocessing_dict`): `pixel_scale`,
            `raw_pixel_max`, `mean`, `std`, `resize`, `input_shape`.
            `Distiller.get_branch_model(i, preprocessing=info)` builds it
            into an exported model, which then takes raw images.

    Example:

    >>> train_ds, test_ds, info = keras_one.data.load("digits")
    >>> info.num_classes, info.input_shape
    (10, (8, 8, 1))
    """

    name: str
    num_classes: int
    input_shape: tuple
    class_names: tuple = dataclasses.field(repr=False)
    num_train_examples: int | None = None
    num_test_examples: int | None = None
    mean: tuple | None = None
    std: tuple | None = None
    train_augmentation: str | None = None
    preprocessing: dict | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self):
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"DatasetInfo of {self.name!r}: {self.num_classes} classes "
                f"but {len(self.class_names)} class names; they must agree."
            )

    def normalization_layer(self, name="normalization"):
        """A Keras layer applying the pipelines' normalization.

        Put it in front of a trained (exported) model to feed it images
        scaled to [0, 1], e.g. `keras.Sequential([keras.layers.Rescaling(
        1 / 255), info.normalization_layer(), branch_model])` for uint8
        images of the pipeline's size. It is the identity when the
        pipelines do not normalize.

        Args:
            name: name of the layer.

        Returns:
            A built-in `keras.layers.Normalization` layer.
        """
        channels = self.input_shape[-1]
        mean = np.zeros(channels) if self.mean is None else self.mean
        std = np.ones(channels) if self.std is None else self.std
        return keras.layers.Normalization(
            mean=np.asarray(mean, "float32"),
            variance=np.square(np.asarray(std, "float32")),
            name=name,
        )
