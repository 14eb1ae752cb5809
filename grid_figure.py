"""Sample grids a person can read: small images (8x8 digits) enlarged without smoothing, panels stacked under
their labels, columns titled (the class each column holds)."""

from __future__ import annotations

from pathlib import Path

import torch
from einops import repeat
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

LABEL_HEIGHT = 18
FONT_SIZE = 12


def enlarged(images: torch.Tensor, columns: int, scale: int) -> Image.Image:
    """Images [N, C, H, W] in [0, 1] as one grid of `columns`, each pixel a `scale` x `scale` block."""
    grid = make_grid(images.clamp(0, 1), nrow=columns, padding=1, pad_value=1.0)
    grid = repeat(grid, "c h w -> (h a) (w b) c", a=scale, b=scale)
    return Image.fromarray((grid * 255).round().to(torch.uint8).numpy()).convert("RGB")


def labelled_panels(panels: list[tuple[str, torch.Tensor]], columns: int, scale: int = 4,
                    column_titles: list[str] | None = None) -> Image.Image:
    """Each (label, images in [0, 1]) panel as an enlarged grid under its label; `column_titles` above the first."""
    font = ImageFont.load_default(size=FONT_SIZE)
    grids = [(label, enlarged(images, columns, scale)) for label, images in panels]
    width = max(grid.width for _, grid in grids)
    header = LABEL_HEIGHT if column_titles else 0
    height = header + sum(LABEL_HEIGHT + grid.height for _, grid in grids)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if column_titles:
        cell = (grids[0][1].width - scale) / columns
        for index, title in enumerate(column_titles):
            draw.text((scale + (index + 0.5) * cell, header / 2), title, fill="black", font=font, anchor="mm")
    top = header
    for label, grid in grids:
        draw.text((4, top + LABEL_HEIGHT / 2), label, fill="black", font=font, anchor="lm")
        canvas.paste(grid, (0, top + LABEL_HEIGHT))
        top += LABEL_HEIGHT + grid.height
    return canvas


def save_labelled_panels(path: Path, panels: list[tuple[str, torch.Tensor]], columns: int, scale: int = 4,
                         column_titles: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_panels(panels, columns, scale, column_titles).save(path)
    return path
