"""The reference pre-activation ResNet, the adaptive multi-label loss and TF1 checkpoint loading.

Importing the package registers our Keras classes (`models.resnet.FusedBatchNormalization`), so that
`keras.saving.load_model` reads the `.keras` files of our training-time models after `import models`
alone. The files tools/export.py writes need no registration: they hold standard Keras layers only
(`models.portable`).
"""

from models import resnet  # noqa: F401  (registers FusedBatchNormalization for keras.saving)
