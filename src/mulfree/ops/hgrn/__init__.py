"""HGRN / MLGRU recurrence h_t = f_t * h_{t-1} + x_t.

`naive_recurrent_hgrn` is the spec (a loop); `chunk_hgrn` is the parallel form the model uses for
training and prefill. Both share one signature and are tested equal on outputs and gradients.
"""

from mulfree.ops.hgrn.chunk import chunk_hgrn
from mulfree.ops.hgrn.naive import naive_recurrent_hgrn

__all__ = ["chunk_hgrn", "naive_recurrent_hgrn"]
