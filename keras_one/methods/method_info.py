import dataclasses
import re

STUDENTS = ("shared_trunk", "independent", "single", "own")
TEACHERS = ("none", "one", "per_branch", "several")
# The teachers given to a `"several"` method when a run does not choose
# (`num_teachers`): the fewest with which a teacher is drawn at random.
SEVERAL_TEACHERS = 2
VIEWS = ("one", "per_branch")


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """What a distillation method needs, stated as data.

    Every method class declares one as its `info` class attribute: its
    registry name and the defaults of its paper (branches, student layout,
    teachers, ramp-up). The `keras-one` command, the experiment runner, the
    tuner, the benchmarks and the tests read it, rather than the method's
    constructor. A class whose own `info` has a `name` registers itself
    under that name when it is defined (`keras_one.methods.get(name)`); its
    `head` and `min_branches` class attributes are read from `info`.

    Args:
        name: the registry name, lowercase letters, digits and underscores
            (e.g. `"one"`, `"cl_ilr"`); `None` for a class that is not
            registered (a base class, or a variant of a registered method).
        branches: the number of branches of the student `build_student`
            builds by default.
        min_branches: the fewest branches the method accepts.
        head: the ensemble head the student needs (see
            `keras_one.models.HEADS`), `None` if the plain branch logits
            suffice.
        student: the layout of the student `build_student` builds:
            `"shared_trunk"` (branches on a shared trunk, with `head`),
            `"independent"` (networks that share no layer,
            `branch_stage=0`), `"single"` (one network: `num_branches` is
            1) or `"own"` (a network of the method's own, built by its
            `build_student`, e.g. OEC's `keras_one.models.oec_resnet`).
        teachers: the pre-trained teachers the method learns from:
            `"none"`, `"one"` (the constructor's `teacher` argument),
            `"per_branch"` (its `teachers` argument, one per branch) or
            `"several"` (its `teachers` argument, one or more, whatever the
            branches: MEAL). `num_teachers(method, num_branches)` gives the
            count a run uses.
        rampup_fraction: the ramp-up of the distillation weight, as a
            fraction of training, from the paper or its official code (ONE:
            80 of 300 epochs); 0 for none. `rampup_epochs(method, epochs)`
            turns it into epochs for a run.
        views: the images the student takes: `"one"` (one image, every
            branch sees it) or `"per_branch"` (one independently augmented
            view of the image per branch, as PCL's peers; the data must
            come from `keras_one.data.load(..., views=num_branches)`).
            `data_views(method, num_branches)` gives the count.
        branch_stage: the first replicated stage of the `"shared_trunk"`
            student `build_student` builds (`branch_stage` of
            `keras_one.models.cifar_resnet`: MCL-OKD's branches share the
            stem and stage 1, so 2), or `None` for the model's default.
        example_index: whether every training example must carry its index
            in the dataset (`keras_one.data.load(..., with_index=True)`,
            batches `({"image": ..., "example_index": ...}, labels)`), for
            state kept per example (MCL-OKD's memory banks); the student
            then takes the index as a second input, `"example_index"`.
            `data_options(method)` gives the `keras_one.data.load` options
            of `views` and `example_index`, `create(method, train_ds)`
            the method constructed with what it reads from the data.

    Example:

    >>> info = keras_one.methods.ONE.info
    >>> info.name, info.branches, info.head, info.teachers
    ('one', 3, 'gate', 'none')
    >>> rampup_epochs(keras_one.methods.ONE, 300)
    80
    """

    name: str | None = None
    branches: int = 3
    min_branches: int = 2
    head: str | None = None
    student: str = "shared_trunk"
    teachers: str = "none"
    rampup_fraction: float = 0.0
    views: str = "one"
    branch_stage: int | None = None
    example_index: bool = False

    def __post_init__(self):
        if self.name is not None and not re.fullmatch(
            r"[a-z][a-z0-9_]*", str(self.name)
        ):
            raise ValueError(
                "A method's name must be lowercase letters, digits and "
                f"underscores, starting with a letter; got {self.name!r}."
            )
        if self.min_branches < 1:
            raise ValueError(
                f"min_branches must be >= 1; got {self.min_branches}."
            )
        if self.branches < self.min_branches:
            raise ValueError(
                f"branches ({self.branches}) must be >= min_branches "
                f"({self.min_branches})."
            )
        if self.student not in STUDENTS:
            raise ValueError(
                f"student must be one of {STUDENTS}; got {self.student!r}."
            )
        if self.student == "single" and self.branches != 1:
            raise ValueError(
                f"A 'single' student has 1 branch; got branches="
                f"{self.branches}."
            )
        if self.teachers not in TEACHERS:
            raise ValueError(
                f"teachers must be one of {TEACHERS}; got {self.teachers!r}."
            )
        if self.views not in VIEWS:
            raise ValueError(
                f"views must be one of {VIEWS}; got {self.views!r}."
            )
        if self.example_index and self.views != "one":
            raise ValueError(
                "example_index=True gives one image per example (the data "
                "cannot carry both indices and views); got "
                f"views={self.views!r}."
            )
        if self.branch_stage is not None and self.branch_stage not in (
            0,
            1,
            2,
            3,
        ):
            raise ValueError(
                "branch_stage must be 0, 1, 2, 3 or None; got "
                f"{self.branch_stage!r}."
            )
        if self.branch_stage is not None and self.student != "shared_trunk":
            raise ValueError(
                "branch_stage applies to a 'shared_trunk' student only; got "
                f"student={self.student!r}."
            )
        if not 0.0 <= self.rampup_fraction <= 1.0:
            raise ValueError(
                "rampup_fraction must lie in [0, 1]; got "
                f"{self.rampup_fraction}."
            )


def rampup_epochs(method, epochs, fraction=None):
    """Resolves a ramp-up given as a fraction of training into epochs.

    The one place where a ramp-up fraction becomes the `rampup_epochs` of a
    method for a run: `round(fraction * epochs)`.

    Args:
        method: a method class or instance; its `info.rampup_fraction` is
            the fraction unless `fraction` is given.
        epochs: the number of epochs of the run.
        fraction: a fraction of training in `[0, 1]` that replaces the
            method's own (a searched or a benchmark's value); `None` for
            the method's.

    Returns:
        The number of ramp-up epochs, an `int`.

    Example:

    >>> rampup_epochs(keras_one.methods.ONE, 30)  # 80 of 300 epochs
    8
    >>> rampup_epochs(keras_one.methods.DML, 30)  # no ramp-up
    0
    >>> rampup_epochs(keras_one.methods.DML, 30, fraction=0.5)
    15
    """
    if fraction is None:
        fraction = method.info.rampup_fraction
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1]; got {fraction}.")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0; got {epochs}.")
    return int(round(fraction * epochs))


def data_views(method, num_branches=None):
    """How many views of each image a method's data must give.

    Args:
        method: a method class or instance.
        num_branches: the student's number of branches; `None` for the
            method's default (`info.branches`).

    Returns:
        1 for a method whose branches share one image; the number of
        branches for one that gives each branch its own view (PCL). Pass
        it as `views=` to `keras_one.data.load`.

    Example:

    >>> data_views(keras_one.methods.ONE)
    1
    >>> data_views(keras_one.methods.PCL, num_branches=4)
    4
    """
    if method.info.views == "per_branch":
        return int(num_branches or method.info.branches)
    return 1


def data_options(method, num_branches=None):
    """The `keras_one.data.load` options a method's data must be loaded with.

    The one reading of a description's data needs (`views`,
    `example_index`) by the command line, the benchmarks and the
    examples: pass them on as `keras_one.data.load(..., **options)` (or to
    `keras_one.data.load_arrays`), for the training and the test data.

    Args:
        method: a method class or instance.
        num_branches: the student's number of branches; `None` for the
            method's default (`info.branches`).

    Returns:
        A dict: empty for plain images; `{"views": n}` for a method whose
        branches each take their own view (PCL, see `data_views`);
        `{"with_index": True}` for one that keeps state per training
        example (MCL-OKD: its batches carry each example's index).

    Example:

    >>> data_options(keras_one.methods.ONE)
    {}
    >>> data_options(keras_one.methods.PCL, num_branches=4)
    {'views': 4}
    >>> data_options(keras_one.methods.MCLOKD)
    {'with_index': True}
    """
    options = {}
    views = data_views(method, num_branches)
    if views > 1:
        options["views"] = views
    if method.info.example_index:
        options["with_index"] = True
    return options


def data_arguments(method, train_ds):
    """The constructor arguments a method reads from its training data.

    For a method with `info.example_index` (MCL-OKD), the class of every
    training example by index, `keras_one.data.example_labels(train_ds)`,
    as `example_labels`; nothing for the others. Reading them iterates
    `train_ds` once (a seeded pipeline then shuffles its later epochs as
    its second, third... iteration): pass a pipeline of its own when a
    run's epochs must be those of a fresh one.

    Args:
        method: a method class or instance.
        train_ds: the training data, loaded with `data_options(method)`;
            may be `None` for a method that reads nothing from it.

    Returns:
        A dict of keyword arguments for the method's constructor.
    """
    if not method.info.example_index:
        return {}
    if train_ds is None:
        raise ValueError(
            f"{_class_name(method)} keeps state per training example: it "
            "needs the training data to be constructed, loaded with "
            "keras_one.data.load(..., with_index=True) (its labels by "
            "index: example_labels=keras_one.data.example_labels(train_ds))."
        )
    from keras_one.data import example_labels

    return {"example_labels": example_labels(train_ds)}


def num_teachers(method, num_branches=None):
    """How many pre-trained teachers a run of a method takes by default.

    The one reading of `info.teachers` as a count, for the benchmarks and
    the tests that build teachers themselves.

    Args:
        method: a method class or instance.
        num_branches: the student's number of branches; `None` for the
            method's default (`info.branches`).

    Returns:
        0 (`"none"`), 1 (`"one"`), the number of branches
        (`"per_branch"`) or `SEVERAL_TEACHERS` (`"several"`: any count
        works; 2 is the fewest with which one is drawn at random).

    Example:

    >>> from keras_one.methods.method_info import num_teachers
    >>> num_teachers(keras_one.methods.KD)
    1
    >>> num_teachers(keras_one.methods.EKD, num_branches=3)
    3
    >>> num_teachers(keras_one.methods.MEAL)
    2
    """
    kind = method.info.teachers
    if kind == "per_branch":
        return int(num_branches or method.info.branches)
    return {"none": 0, "one": 1, "several": SEVERAL_TEACHERS}[kind]


def create(method, train_ds=None, teachers=None, **kwargs):
    """Constructs a method for a run, with what its description asks for.

    The one place where the command line, the benchmarks and the tuner
    turn a method name into an instance: the pre-trained teachers go to
    the argument `info.teachers` names (`teacher=` or `teachers=`), and
    the arguments read from the training data (`data_arguments`: MCL-OKD's
    labels by example index) are added unless `kwargs` gives them.

    Args:
        method: a method name (see `keras_one.methods.names()`) or class.
        train_ds: the training data, loaded with `data_options(method)`;
            needed only by methods with `info.example_index`.
        teachers: the pre-trained teacher models, for methods whose
            `info.teachers` is `"one"` (one model), `"per_branch"` or
            `"several"`;
            `None` to pass them (if any) in `kwargs`.
        **kwargs: other constructor arguments (`temperature`,
            `rampup_epochs`, ...).

    Returns:
        The method instance.

    Example:

    >>> create("dml", rampup_epochs=2).rampup_epochs
    2
    """
    from keras_one.methods import registry

    method_class = registry.get(method) if isinstance(method, str) else method
    info = method_class.info
    arguments = dict(kwargs)
    if teachers is not None:
        teachers = list(teachers)
        name = method_class.__name__
        if info.teachers == "one":
            if len(teachers) != 1:
                raise ValueError(
                    f"{name} learns from one pre-trained teacher; got "
                    f"{len(teachers)}."
                )
            arguments["teacher"] = teachers[0]
        elif info.teachers in ("per_branch", "several"):
            if not teachers:
                each = " per branch" if info.teachers == "per_branch" else "s"
                raise ValueError(
                    f"{name} learns from pre-trained teacher{each}; got none."
                )
            arguments["teachers"] = teachers
        elif teachers:
            raise ValueError(f"{name} takes no pre-trained teachers.")
    if info.example_index and "example_labels" not in arguments:
        arguments.update(data_arguments(method_class, train_ds))
    return method_class(**arguments)


def _class_name(method):
    return (method if isinstance(method, type) else type(method)).__name__
