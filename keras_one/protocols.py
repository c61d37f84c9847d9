"""Training protocols of the papers, exactly: one name sets the whole recipe.

`keras-one train --protocol one` (and `bench/accuracy.py --protocol one`)
trains with the recipe of ONE's official scripts, so that a GPU user
reproduces a published table with one flag. A protocol fixes the
optimizer and its schedule, the weight decay, the batch size and the
epochs; the network, the dataset and its augmentation (pad-4 random crops
and horizontal flips for CIFAR, `keras_one.data`'s default) are chosen as
usual, and the method keeps its own ramp-up (`MethodInfo.rampup_fraction`,
e.g. ONE's 80 of 300 epochs).

| name | epochs | batch | SGD | lr and schedule | weight decay |
|---|---|---|---|---|---|
| `one` | 300 | 128 | momentum 0.9 | 0.1, x0.1 at epochs 151 and 225 | 1e-4 |
| `pcl` | 300 | 128 | Nesterov 0.9 | 0.1, x0.1 at epochs 150 and 225 | 5e-4 |
| `mcl_okd` | 300 | 64 | Nesterov 0.9 | 0.05, one cosine to 0 | 5e-4 |

`one` is the recipe of ONE's official scripts (Lan1991Xu/ONE_NeurIPS2018),
`pcl` PCL's (Wu and Gong, AAAI 2021) as its reimplementation trains, and
`mcl_okd` the official code's of MCL-OKD (winycg/MCL-OKD).

Epochs count from 0, as the official loops do: under `one`, epochs 0 to
150 train at 0.1, 151 to 224 at 0.01 and 225 to 299 at 0.001 (the
official scripts pass `--schedule 151 225`; its code's default is 150
225). The weight decay is coupled L2 on every weight, as
`torch.optim.SGD(weight_decay=...)` (see `keras_one.models`).

Example:

>>> protocol = keras_one.protocols.get("one")
>>> protocol.epochs, protocol.batch_size, protocol.milestones
(300, 128, (151, 225))
>>> optimizer = protocol.optimizer(steps_per_epoch=391)
>>> optimizer.nesterov, optimizer.momentum
(False, 0.9)
"""

import dataclasses

import keras


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A paper's training recipe.

    Args:
        name: the name `get` and `--protocol` take.
        source: where the recipe comes from.
        epochs: training epochs.
        batch_size: examples per batch.
        learning_rate: the initial learning rate.
        weight_decay: coupled L2 weight decay of every weight.
        nesterov: Nesterov momentum (`False`: plain momentum).
        schedule: `"step"` (x`factor` at each of `milestones`) or
            `"cosine"` (one cosine decay to 0 over all the steps).
        milestones: the 0-based epochs from which the learning rate is
            multiplied by `factor` (`"step"` only).
        momentum: SGD's momentum.
        factor: the step schedule's factor.
    """

    name: str
    source: str
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    nesterov: bool
    schedule: str
    milestones: tuple = ()
    momentum: float = 0.9
    factor: float = 0.1

    def learning_rate_schedule(self, steps_per_epoch):
        """The learning rate of each optimizer step (0-based)."""
        steps_per_epoch = int(steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(
                f"steps_per_epoch must be >= 1; got {steps_per_epoch}."
            )
        if self.schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(
                self.learning_rate, decay_steps=self.epochs * steps_per_epoch
            )
        # PiecewiseConstantDecay keeps values[0] while step <= boundary:
        # the first step of epoch m is step m * steps_per_epoch.
        boundaries = [m * steps_per_epoch - 1 for m in self.milestones]
        values = [
            self.learning_rate * self.factor**i
            for i in range(len(self.milestones) + 1)
        ]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, values
        )

    def optimizer(self, steps_per_epoch):
        """A fresh `keras.optimizers.SGD` following this protocol."""
        return keras.optimizers.SGD(
            self.learning_rate_schedule(steps_per_epoch),
            momentum=self.momentum,
            nesterov=self.nesterov,
        )

    def settings(self):
        """What the protocol sets, as `keras-one train` names its flags."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
        }


PROTOCOLS = {
    protocol.name: protocol
    for protocol in (
        Protocol(
            name="one",
            source="ONE's official scripts (github Lan1991Xu/ONE_NeurIPS2018)",
            epochs=300,
            batch_size=128,
            learning_rate=0.1,
            weight_decay=1e-4,
            nesterov=False,
            schedule="step",
            milestones=(151, 225),
        ),
        Protocol(
            name="pcl",
            source="PCL (Wu and Gong, AAAI 2021), as its reimplementation "
            "(github shaoeric/Peer-Collaborative-Learning-for-Online-"
            "Knowledge-Distillation) trains",
            epochs=300,
            batch_size=128,
            learning_rate=0.1,
            weight_decay=5e-4,
            nesterov=True,
            schedule="step",
            milestones=(150, 225),
        ),
        Protocol(
            name="mcl_okd",
            source="MCL-OKD's official code (github winycg/MCL-OKD, "
            "main_cifar_mcl_okd.py)",
            epochs=300,
            batch_size=64,
            learning_rate=0.05,
            weight_decay=5e-4,
            nesterov=True,
            schedule="cosine",
        ),
    )
}


def names():
    """The protocols' names."""
    return tuple(PROTOCOLS)


def get(name):
    """The `Protocol` called `name` (`"one"`, `"pcl"`, `"mcl_okd"`)."""
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown protocol {name!r}; choose one of {names()}."
        ) from None
