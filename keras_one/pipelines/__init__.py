"""Multi-stage distillation pipelines, each stage a Keras `fit`.

The pipelines train several networks (or parts of networks) one after the
other, with the frozen earlier ones as teachers:

- `ensemble_distillation`, `self_distillation` and `born_again` (Allen-Zhu
  and Li, ICLR 2023, arXiv:2012.09816; Furlanello et al., ICML 2018,
  arXiv:1805.04770): whole networks of one architecture, the later ones
  distilled from the earlier ones (`keras_one.pipelines.ensembles`).
- `sparse_representation_matching` (SRM; Tran, Gabbouj and Iosifidis,
  arXiv:2103.17012): a sparse coding of the teacher's intermediate
  features initializes the student, which KD then trains
  (`keras_one.pipelines.srm`).
- `blockwise_distillation` (Ahmed et al., ICPR 2020, arXiv:2104.09191):
  every block of a cheaper student learns its teacher block's output, then
  the student is fine-tuned with KD (`keras_one.pipelines.blockwise`).

Every distillation stage is `keras_one.methods.KD` in a
`keras_one.Distiller`; every stage is trained with Keras `fit`. Each stage
is saved in `directory` as `<stage>.keras` (written whole or not at all)
as soon as it finishes, with `<stage>.json` (its test accuracy or loss,
epoch logs and training time), and is backed up at every epoch end while
it trains (`keras.callbacks.BackupAndRestore`, as `keras-one train` backs
up its stages). Calling the pipeline again with the same `directory` loads
the finished stages, resumes the interrupted one from its last finished
epoch and trains the rest: with freshly built datasets (as a new process
builds them: never iterated, built after the same
`keras.utils.set_random_seed`, as TensorFlow combines a shuffle's seed
with the global seed) it ends with the weights of an uninterrupted run. A
directory holding another pipeline, or one with other settings, is
refused, and a directory that a live run is using is locked.

The stages are TensorFlow-backend code (the backups and the data order
use `tf.data`), as the `keras-one` command is.

`keras-one pipeline {ensemble,self,ban,srm,blockwise}` runs them from the
command line.
"""

from keras_one.pipelines import blockwise
from keras_one.pipelines import ensembles
from keras_one.pipelines import srm
from keras_one.pipelines._features import ArgumentError
from keras_one.pipelines._stages import RECORD
from keras_one.pipelines.blockwise import blockwise_distillation
from keras_one.pipelines.ensembles import born_again
from keras_one.pipelines.ensembles import ensemble_distillation
from keras_one.pipelines.ensembles import ensemble_model
from keras_one.pipelines.ensembles import self_distillation
from keras_one.pipelines.srm import sparse_representation_matching

# Each pipeline's defaults, as data (the `keras-one pipeline` command reads
# them).
DEFAULTS = {
    **ensembles.DEFAULTS,
    "sparse_representation_matching": srm.DEFAULTS,
    "blockwise_distillation": blockwise.DEFAULTS,
}

__all__ = [
    "DEFAULTS",
    "ArgumentError",
    "RECORD",
    "blockwise_distillation",
    "born_again",
    "ensemble_distillation",
    "ensemble_model",
    "self_distillation",
    "sparse_representation_matching",
]
