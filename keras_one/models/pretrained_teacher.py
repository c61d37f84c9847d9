import keras

from keras_one import _hub


def pretrained_teacher(teacher, input_preprocessing=None, name=None):
    """A keras-hub classifier as a teacher of the student's images.

    A keras-hub `ImageClassifier` computes its logits from images its own
    preprocessor prepared (resized to its image size, scaled and offset as
    in its pre-training), which its `fit` and `predict` apply, not its
    `call`. This returns a Keras model that takes the student's images,
    brings them back to raw 0-255 pixels (undoing `input_preprocessing`,
    the normalization the student's data went through), applies the
    teacher's own preprocessing with built-in Keras layers (`Resizing`,
    `Rescaling`) and returns the classifier's logits. The student keeps
    its own preprocessing. `keras_one.methods.KD`, `EKD` and `SOKD` call
    it for teachers given as keras-hub classifiers or preset names.

    Args:
        teacher: a `keras_hub.models.ImageClassifier`, or the name of a
            keras-hub classifier preset (e.g. `"resnet_18_imagenet"`, a
            `kaggle://` or `hf://` handle, or a local preset folder),
            loaded with its pretrained weights. Its logits must be for the
            student's classes.
        input_preprocessing: what was done to raw pixels to make the
            student's images: a `keras_one.data.DatasetInfo` or its
            `preprocessing` dict (pixels scaled to [0, 1], then `mean`
            subtracted and divided by `std` per channel), or `None` (the
            default) when the student's images are raw 0-255 pixels.
        name: name of the returned model; defaults to
            `<classifier>_teacher`.

    Returns:
        A functional `keras.Model` from images of any size with the
        classifier's channels to its logits.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.ResNetBackbone(
    ...     input_conv_filters=[64], input_conv_kernel_sizes=[3],
    ...     stackwise_num_filters=[64], stackwise_num_blocks=[1],
    ...     stackwise_num_strides=[1], block_type="basic_block",
    ...     image_shape=(32, 32, 3))
    >>> converter = keras_hub.layers.ResNetImageConverter(
    ...     image_size=(32, 32), scale=1 / 255.0)
    >>> classifier = keras_hub.models.ResNetImageClassifier(
    ...     backbone, num_classes=10,
    ...     preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(
    ...         converter))
    >>> teacher = pretrained_teacher(classifier)
    >>> tuple(teacher.output.shape)
    (None, 10)
    """
    feature = "A keras-hub teacher"
    keras_hub = _hub.keras_hub_module(feature)
    if isinstance(teacher, str):
        teacher = _hub.from_preset(
            keras_hub.models.ImageClassifier, teacher, feature
        )
    if not _hub.is_image_classifier(teacher):
        raise TypeError(
            "pretrained_teacher takes a keras_hub.models.ImageClassifier or "
            f"the name of its preset; got {type(teacher).__name__}. Pass "
            "other Keras models to the methods as they are."
        )
    channels = teacher.input.shape[-1]
    images = keras.Input((None, None, channels), name="images")
    pixels = images
    if input_preprocessing is not None:
        scale, offset = _raw_pixels(input_preprocessing, channels)
        pixels = keras.layers.Rescaling(scale, offset, name="raw_pixels")(
            pixels
        )
    converter = getattr(teacher.preprocessor, "image_converter", None)
    if converter is not None:
        config = converter.get_config()
        size = config.get("image_size") or teacher.input.shape[1:3]
        if None not in tuple(size):
            pixels = keras.layers.Resizing(
                *size,
                interpolation=config.get("interpolation", "bilinear"),
                crop_to_aspect_ratio=config.get("crop_to_aspect_ratio", False),
                antialias=config.get("antialias", False),
                name="teacher_resizing",
                # `training=False` explicitly: Keras' image preprocessing
                # layers default to `training=True`, and a layer's default
                # becomes the call context of the layers after it, so a
                # bare `teacher(images)` would run the classifier's
                # BatchNormalization in training mode (its statistics
                # updated). A `training` given to the teacher overrides it.
            )(pixels, training=False)
        scale = config.get("scale")
        offset = config.get("offset")
        pixels = keras.layers.Rescaling(
            1.0 if scale is None else scale,
            0.0 if offset is None else offset,
            name="teacher_rescaling",
        )(pixels)
    return keras.Model(
        images, teacher(pixels), name=name or f"{teacher.name}_teacher"
    )


def _raw_pixels(preprocessing, channels):
    """`(scale, offset)` taking normalized images back to 0-255 pixels."""
    from keras_one import export

    preprocessing = export.preprocessing_of(preprocessing)
    mean = preprocessing.get("mean")
    if mean is None:
        return 255.0, 0.0
    std = preprocessing["std"]
    if len(mean) != channels:
        raise ValueError(
            f"input_preprocessing normalizes {len(mean)} channels but the "
            f"teacher reads {channels}: pass the preprocessing of the "
            "student's dataset."
        )
    return [255.0 * s for s in std], [255.0 * m for m in mean]
