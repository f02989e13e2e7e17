"""The letters A-Z rendered from the fonts that ship inside matplotlib (``mpl-data/fonts/ttf``).

Each letter of each text font is drawn white on black, centred in a 28 x 28 image, in
``copies`` versions with a light random rotation, scale and shift (seeded). The symbol fonts
(STIX's non-Unicode and size variants, Computer Modern's symbol and extension fonts, the
last-resort font) are left out, and so is any font without a glyph for a letter. The task is
split by font (``split_fonts``): a test font is never seen in training, so the test measures
reading letters in a typeface the model has not met.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import Augment

LETTERS = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
SIZE = 28
_TEXT_FONTS = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
    "cmr10", "cmb10", "cmss10", "cmtt10", "cmti10", "cmmi10",
)  # fmt: skip
_RENDER_AUGMENT = Augment(rotation=8.0, scale=0.1, shift=0.08)


def font_files(root: Path) -> list[Path]:
    """The text fonts found under matplotlib's ``mpl-data/fonts/ttf`` folder ``root``."""
    return [root / f"{name}.ttf" for name in _TEXT_FONTS if (root / f"{name}.ttf").is_file()]


def render(letter: str, font: ImageFont.FreeTypeFont) -> np.ndarray | None:
    """``letter`` centred in a ``SIZE`` x ``SIZE`` grey image (None: the font has no such glyph)."""
    canvas = Image.new("L", (SIZE * 2, SIZE * 2), 0)
    ImageDraw.Draw(canvas).text((SIZE, SIZE), letter, fill=255, font=font, anchor="mm")
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    scale = (SIZE - 6) / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.BILINEAR)
    out = Image.new("L", (SIZE, SIZE), 0)
    out.paste(glyph, ((SIZE - glyph.width) // 2, (SIZE - glyph.height) // 2))
    return np.asarray(out)


def render_letters(root: Path, copies: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """``(font name, letter, image)`` for every letter of every text font, ``copies`` each."""
    rng = np.random.default_rng(seed)
    rendered = []
    for path in font_files(root):
        font = ImageFont.truetype(str(path), SIZE * 3 // 2)
        for letter in LETTERS:
            image = render(letter, font)
            if image is None:
                continue
            picture = Image.fromarray(image)
            for _ in range(copies):
                rendered.append((path.stem, letter, np.asarray(_RENDER_AUGMENT(picture, rng))))
    return rendered


def split_fonts(fonts: list[str], seed: int, held_out: float = 0.1) -> tuple[set[str], set[str]]:
    """(validation fonts, test fonts): a seeded ``held_out`` share each, at least one."""
    order = [fonts[i] for i in np.random.default_rng(seed).permutation(len(fonts))]
    count = max(1, round(len(fonts) * held_out))
    return set(order[:count]), set(order[count : 2 * count])
