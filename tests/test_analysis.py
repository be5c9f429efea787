"""Analysis: the PNG writer round-trips and image grids place every image where they say."""

import zlib

import numpy as np
import pytest

from advjax.analysis import image_grid, read_png, write_png


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip(tmp_path, channels):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(7, 5, channels), dtype=np.uint8)
    path = tmp_path / "x.png"
    write_png(str(path), image)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    np.testing.assert_array_equal(read_png(str(path)), image)
    # Corrupting the compressed pixels breaks the chunk CRC, and the reader says so.
    bad = bytearray(data)
    bad[data.index(b"IDAT") + 6] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises((ValueError, zlib.error), match="CRC|Error"):
        read_png(str(path))


def test_image_grid_layout():
    rows = [np.full((3, 2, 2, 1), v, np.float32) for v in (0.0, 0.5)]
    rows[1][2] = 1.0
    grid = image_grid(rows, pad=1, scale=2, background=0.25)
    assert grid.shape == (2 * (4 + 1) + 1, 3 * (4 + 1) + 1, 1) and grid.dtype == np.uint8
    assert grid[0, 0, 0] == round(0.25 * 255)  # padding
    assert np.all(grid[1:5, 1:5] == 0)  # row 0, image 0, scaled 2x
    assert np.all(grid[6:10, 1:5] == 128) and np.all(grid[6:10, 11:15] == 255)
    with pytest.raises(ValueError, match="row 1 has shape"):
        image_grid([rows[0], rows[1][:2]])
    with pytest.raises(ValueError, match="NHWC"):
        image_grid([np.zeros((2, 4, 4))])
    with pytest.raises(ValueError, match="uint8"):
        write_png("unused.png", np.zeros((2, 2), np.float32))
