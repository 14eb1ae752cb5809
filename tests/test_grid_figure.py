"""Readable sample grids: every pixel enlarged to a block without smoothing, panels under their labels."""

import numpy as np
import torch

from potstill.grid_figure import LABEL_HEIGHT, labelled_panels


def test_panels_enlarge_each_pixel_to_a_block_under_its_label():
    images = torch.rand(6, 1, 3, 3)
    figure = np.asarray(labelled_panels([("first", images), ("second", 1 - images)], columns=3, scale=4,
                                        column_titles=["a", "b", "c"]))
    cell = 4 * (3 + 1)                                     # 3 pixels and one of padding per image, times 4
    grid_height = 4 * (2 * (3 + 1) + 1)
    assert figure.shape == (LABEL_HEIGHT + 2 * (LABEL_HEIGHT + grid_height), 4 * (3 * (3 + 1) + 1), 3)
    top = 2 * LABEL_HEIGHT                                 # column titles, then the first label
    for index in (0, 1):                                   # after the one-pixel padding, enlarged 4 times
        found = figure[top + 4 : top + 16, 4 + index * cell : 4 + index * cell + 12, 0].astype(float)
        expected = np.kron((images[index, 0] * 255).round().numpy(), np.ones((4, 4)))
        assert np.abs(found - expected).max() <= 1
    for row in (LABEL_HEIGHT, 2 * LABEL_HEIGHT + grid_height):    # each label strip holds dark text on white
        strip = figure[row : row + LABEL_HEIGHT, :60]
        assert strip.min() < 100 and np.median(strip) == 255
