import dataclasses
import re

STUDENTS = ("shared_trunk", "independent", "single", "own")
TEACHERS = ("none", "one", "per_branch")
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
            `"none"`, `"one"` (the constructor's `teacher` argument) or
            `"per_branch"` (its `teachers` argument, one per branch).
        rampup_fraction: the ramp-up of the distillation weight, as a
            fraction of training, from the paper or its official code (ONE:
            80 of 300 epochs); 0 for none. `rampup_epochs(method, epochs)`
            turns it into epochs for a run.
        views: the images the student takes: `"one"` (one image, every
            branch sees it) or `"per_branch"` (one independently augmented
            view of the image per branch, as PCL's peers; the data must
            come from `keras_one.data.load(..., views=num_branches)`).
            `data_views(method, num_branches)` gives the count.

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
