"""The standalone decoder that ships inside a submission (its bytes count against the budget).

It must import nothing from this project: only the standard library, numpy (or torch) and the
codec libraries. The rest of the project imports its reading and dequantization from here, so
the code that is measured is the code that ships.
"""

import numpy as np


def _float32(x):
    # Works for numpy arrays and torch tensors alike, so the trainer's QAT and the shipped
    # decoder share this one dequantization.
    return x.astype(np.float32) if isinstance(x, np.ndarray) else x.float()


def dequantize(codes, scales, group_size=None):
    """Weights from integer codes and scales: the one dequantization of every scheme.

    - `scales` 0-d (or a 1-element vector for a 1-D tensor): one scale for the whole tensor;
    - `group_size` None and `scales` of shape (rows,): one scale per row, w = q·s[row];
    - `group_size` g: `scales` of shape (rows, cols // g), one scale per group of g columns.
    Ternary, binary, int2..int8 and LQER factors all reduce to these three cases.
    """
    q = _float32(codes)
    s = _float32(scales)
    if s.ndim == 0 or (q.ndim == 1 and s.shape[0] == 1):
        return q * s.reshape(())
    if group_size is None:
        return q * s.reshape(s.shape[0], *([1] * (q.ndim - 1)))
    rows, cols = q.shape
    groups = s.reshape(rows, cols // group_size, 1)
    return (q.reshape(rows, cols // group_size, group_size) * groups).reshape(rows, cols)
