"""The Bible in English and Spanish as a translation task (``bible_es``), from Debian's SWORD modules.

Debian's ``sword-text-kjv`` (King James Version, 1769 text) and ``sword-text-sparv`` (Reina-Valera
1909) install compressed SWORD "ztext" modules under ``/usr/share/sword/modules/texts/ztext/``;
both use the KJV versification, so their verse indexes align entry for entry: 31,000 English ->
Spanish verse pairs, public domain. A module holds, per testament (``ot``, ``nt``):

* ``<t>.bzs``: blocks, 12 bytes each: offset and size in ``<t>.bzz``, uncompressed size (u32 LE);
* ``<t>.bzv``: verses, 10 bytes each: block number (u32), offset in the uncompressed block (u32),
  length (u16); length 0 for an empty slot (module, book and chapter headings);
* ``<t>.bzz``: the zlib-compressed blocks of OSIS-marked UTF-8 text.

Verse text keeps the words only: notes and titles are dropped with their content, every other
tag (Strong's numbers ``<w lemma=...>``, added words, quotation marks) is removed, whitespace
collapsed. The split is by English verse, as for the Django tasks (``django_catalogues.split_of``).
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

from .django_catalogues import translation_task
from .task import TaskData

SWORD_TEXTS = Path("/usr/share/sword/modules/texts/ztext")
#: Language code -> (module folder, Debian package).
MODULES = {"en": ("engKJV2006eb", "sword-text-kjv"), "es": ("spaRV1909eb", "sword-text-sparv")}
TASKS = ("bible_es",)
_DROPPED = re.compile(r"<(note|title)\b[^>]*>.*?</\1>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def clean(text: str) -> str:
    """The words of one OSIS-marked verse."""
    return " ".join(_TAG.sub("", _DROPPED.sub("", text)).split())


def read_ztext(folder: Path) -> list[str]:
    """Every verse slot of a SWORD ztext module (Old then New Testament), cleaned; "" for empty slots.

    Raises:
        FileNotFoundError: a missing module file (naming it).
        ValueError: a block that is not zlib data.
    """
    verses: list[str] = []
    for testament in ("ot", "nt"):
        paths = [folder / f"{testament}.{suffix}" for suffix in ("bzs", "bzv", "bzz")]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: not a complete SWORD ztext module")
        blocks_raw, index, data = (path.read_bytes() for path in paths)
        blocks = [struct.unpack_from("<3I", blocks_raw, at) for at in range(0, len(blocks_raw) - 11, 12)]
        cache: dict[int, bytes] = {}
        for at in range(0, len(index) - 9, 10):
            block, offset, size = struct.unpack_from("<IIH", index, at)
            if size == 0 or block >= len(blocks):
                verses.append("")
                continue
            if block not in cache:
                start, length, _ = blocks[block]
                try:
                    cache[block] = zlib.decompress(data[start : start + length])
                except zlib.error as error:
                    raise ValueError(f"{paths[2]}: block {block} is not zlib data ({error})") from error
            verses.append(clean(cache[block][offset : offset + size].decode("utf-8", errors="replace")))
    return verses


def module_folder(code: str, root: Path = SWORD_TEXTS) -> Path:
    folder, package = MODULES[code]
    path = root / folder
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the bible tasks read Debian's SWORD modules; apt-get install {package}")
    return path


def load_bible_task(name: str, seed: int = 0, max_examples: int | None = None, root: Path = SWORD_TEXTS) -> TaskData:
    """``bible_es``: English (KJV) -> Spanish (Reina-Valera 1909) verse pairs with the seeded
    75/10/15 split by English verse.

    Raises:
        ValueError: an unknown name; FileNotFoundError: the Debian packages are not installed.
    """
    if name not in TASKS:
        raise ValueError(f"unknown Bible task {name!r}; available: {', '.join(TASKS)}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive count or None, got {max_examples}")
    english, spanish = read_ztext(module_folder("en", root)), read_ztext(module_folder("es", root))
    pairs: dict[str, str] = {}
    for source, target in zip(english, spanish):
        if source and target:
            pairs.setdefault(source, target)
    return translation_task(name, {"es": pairs}, seed, max_examples)
