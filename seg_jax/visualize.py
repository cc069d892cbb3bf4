"""Figures people would rather see than read: predicted masks beside images and ground truth."""

import numpy as np
from PIL import Image, ImageDraw

# Colour of ignored (void) pixels in mask figures.
VOID_COLOR = np.array([255, 255, 255], np.uint8)


def colorize(mask: np.ndarray, palette: np.ndarray, ignore_label: int) -> np.ndarray:
    """int [H, W] class ids -> uint8 [H, W, 3] colours; ignore_label (and unknown ids) in white."""
    palette = np.asarray(palette, np.uint8)
    valid = (mask >= 0) & (mask < len(palette))
    out = palette[np.where(valid, mask, 0)]
    out[~valid | (mask == ignore_label)] = VOID_COLOR
    return out


def save_prediction_grid(
    path: str,
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    *,
    palette: np.ndarray,
    ignore_label: int,
    class_names=None,
    scale: int = 2,
) -> None:
    """Writes a PNG with one row per example: image | ground truth | prediction.

    Args:
      images: uint8 [N, H, W, 3]; labels, predictions: int [N, H, W] (arrays, or lists of
        per-example arrays whose sizes may differ: narrower rows are padded with white).
      palette: uint8 [C, 3] fixed class colours (the same in every figure of a dataset).
      class_names: optional names for a colour legend under the grid.
      scale: integer upscaling (nearest) so that small masks stay legible.
    """
    rows = []
    for image, label, pred in zip(images, labels, predictions):
        rows.append(np.concatenate(
            [image, colorize(label, palette, ignore_label), colorize(pred, palette, ignore_label)],
            axis=1,
        ))
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
            for row in rows]
    grid = np.concatenate(rows, axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    header_h, legend_h = 16, 18 if class_names else 0
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + header_h + legend_h), "white")
    canvas.paste(Image.fromarray(grid), (0, header_h))
    draw = ImageDraw.Draw(canvas)
    column_w = grid.shape[1] // 3
    for i, title in enumerate(("image", "ground truth", "prediction")):
        draw.text((i * column_w + 4, 2), title, fill="black")
    if class_names:
        x, y = 4, header_h + grid.shape[0] + 3
        for name, color in zip(class_names, np.asarray(palette, np.uint8)):
            draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(c) for c in color), outline="black")
            draw.text((x + 14, y), name, fill="black")
            x += 14 + 7 * len(name) + 10
    canvas.save(path)
