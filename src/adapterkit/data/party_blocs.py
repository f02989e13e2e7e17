"""One label set for the four parliaments: left or right bloc of the speaker's party.

The bundled ParlSpeech samples (``parlspeech_{en,de,es,nl}``) label each speech with its
speaker's party, and the parties differ per country, so a classifier trained on House of Commons
parties cannot be scored on the Bundestag's. To evaluate one task across languages (MAD-X's
zero-shot transfer) every party is mapped to a bloc by its party family, in the spirit of ParlGov's
families: ``left`` = social democratic, socialist or green; ``right`` = conservative, christian
democratic, market-liberal or right-populist. Left out: centrist social-liberal parties (Liberal
Democrats, D66, UPyD), regional and nationalist parties of any side (SNP, Plaid Cymru, DUP, CiU,
PNV, ERC, Coalición Canaria), Spain's mixed group, independents and "other". A coarse label, chosen
because it is the one the four countries share; it is not a measured left-right position.
"""

from __future__ import annotations

LEFT, RIGHT = "left", "right"
BLOCS = (LEFT, RIGHT)

PARTY_BLOCS: dict[str, dict[str, str]] = {
    "en": {"Con": RIGHT, "Lab": LEFT, "GPEW": LEFT},
    "de": {"CDU/CSU": RIGHT, "FDP": RIGHT, "AfD": RIGHT, "SPD": LEFT, "GRUENE": LEFT, "PDS/LINKE": LEFT},
    "es": {
        "GPP": RIGHT, "GCs": RIGHT,  # Partido Popular, Ciudadanos
        "GPSOE": LEFT, "GIU": LEFT, "GIU-ICV": LEFT, "GER-IU-ICV": LEFT, "GIP": LEFT,  # PSOE, Izquierda Unida (+ICV), Izquierda Plural
        "GCUP-EC-EM": LEFT,  # Unidos Podemos
    },
    "nl": {
        "VVD": RIGHT, "CDA": RIGHT, "PVV": RIGHT, "SGP": RIGHT, "CU": RIGHT, "LPF": RIGHT, "FvD": RIGHT,
        "GPV": RIGHT, "RPF": RIGHT,  # the ChristenUnie's predecessors
        "PvdA": LEFT, "SP": LEFT, "GL": LEFT, "PvdD": LEFT,
    },
}  # fmt: skip
"""Per language, party (as the corpus spells it) -> bloc; parties not listed are left out."""


def bloc_records(language: str, records: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(text, party)`` records -> ``(text, bloc)``, dropping parties without a bloc."""
    blocs = PARTY_BLOCS[language]
    return [(text, blocs[party]) for text, party in records if party in blocs]
