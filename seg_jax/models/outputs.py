"""`ModelOutput`: what every segmentation model returns, whatever heads it has.

One type for every model means that training objectives, evaluation and prediction read fields
instead of asking "is this an array or a dict?", and that a generic train step never needs to know
which model family produced the output.
"""

import flax.struct
import jax


@flax.struct.dataclass
class ModelOutput:
    """The outputs of a segmentation model, all float32 at the input's height and width.

    Attributes:
      logits: [N, H, W, C] semantic class scores (every model).
      aux_logits: [N, H, W, C] the auxiliary FCN head's scores (DeepLab with `aux_head=True`, in
        training only: `train=False` leaves it None); trained with `config.loss.aux_weight`.
      center: [N, H, W] the centre heatmap of a panoptic model (Panoptic-DeepLab), else None.
      offset: [N, H, W, 2] (dy, dx) from each pixel to its instance's centre, else None.
    """

    logits: jax.Array
    aux_logits: jax.Array | None = None
    center: jax.Array | None = None
    offset: jax.Array | None = None

    @property
    def is_panoptic(self) -> bool:
        """Whether the output has the centre and offset heads that make instances."""
        return self.center is not None and self.offset is not None
