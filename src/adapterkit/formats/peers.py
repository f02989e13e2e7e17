"""Reading and writing the peer libraries' adapter folders, whichever wrote them.

:func:`read_peer` detects the library from the folder's JSON (``detect.py``) and converts every
adapter in it; :func:`write_peer` writes adapters in a peer's layout. Both are pure: the model is
seen only through a :class:`~adapterkit.formats.layout.ModelLayout`, and the facade
(``AdapterModel.load_adapter`` / ``save_adapter``) adds the results to the model or takes them
from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import adapterhub, adapterhub_export, peft, peft_export
from .detect import ADAPTERHUB, PEFT, folder_format
from .layout import Converted, ModelLayout


@dataclass
class PeerFolder:
    """The adapters of one peer folder, in the order they must be added (a fusion's members
    before it), the name of the main one (peft's first adapter; AdapterHub's fusion, or the
    adapter answering its saved setup), and the saved setup in adapterkit's JSON form, if any."""

    adapters: list[Converted]
    main: str
    setup: dict | str | None = None


def read_peer(directory: str | Path, layout: ModelLayout) -> PeerFolder:
    """Convert the peft or AdapterHub folder ``directory`` for the model ``layout`` describes.

    Raises:
        ValueError: an adapterkit folder (load it natively) or none the three libraries write.
        NotConvertible: an option or tensor without an exact adapterkit equivalent (named).
    """
    found = folder_format(directory)
    if found == PEFT:
        adapters = peft.read_peft(directory, layout)
        return PeerFolder(adapters, adapters[0].name)
    if found == ADAPTERHUB:
        adapters = adapterhub.read_adapterhub(directory, layout)
        setup = adapterhub.read_setup(directory)
        if setup is not None:
            return PeerFolder(adapters, adapterhub.setup_head(setup), setup)
        fusions = [a for a in adapters if a.config["method"] == "fusion"]
        return PeerFolder(adapters, (fusions or adapters)[-1 if fusions else 0].name)
    raise ValueError(f"{directory} is an adapterkit folder, not a peer's")


EXPORTERS = {PEFT: peft_export.write_peft, ADAPTERHUB: adapterhub_export.write_adapterhub}


def write_peer(target: str, directory: str | Path, adapter: Converted, members: list[Converted], layout: ModelLayout) -> Path:
    """Write ``adapter`` (with the adapters it fuses, ``members``, for a fusion) to ``directory``
    in the layout of ``target`` (``peft`` or ``adapterhub``).

    Raises:
        ValueError: an unknown target.
        NotConvertible: what the target library cannot represent (named, with why).
    """
    if target not in EXPORTERS:
        raise ValueError(f"unknown adapter format {target!r}; adapterkit writes adapterkit, {', '.join(EXPORTERS)}")
    return EXPORTERS[target](Path(directory), adapter, members, layout)
