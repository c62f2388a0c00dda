"""A compact list of common given names, for the person-name detector.

Deliberately small (a few hundred names across English-, Spanish-, French-,
German-, Italian-, Dutch- and Nordic-speaking countries plus common Indian and
East Asian romanisations): the detector needs a name to anchor "Firstname
Lastname" values, not a census. Stored lower case.
"""

from __future__ import annotations

GIVEN_NAMES: frozenset[str] = frozenset(
    """
    aaron abigail adam adrian ahmed aisha alan albert alberto alejandro alex alexander
    alexandra alice alicia alison amanda amelia amy ana andrea andreas andrew angela anna
    anne antonio anthony arjun arthur ashley barbara ben benjamin bernard beth betty brian
    bruce camille carl carla carlos carmen carol caroline catherine charles charlotte chen
    chloe chris christian christina christine christopher claire claudia daniel daniela
    david deborah dennis diana diego dmitri donald donna dorothy edward elena elizabeth
    ellen emily emma eric erik eva fatima felix fernando fiona francesca francesco francisco
    frank gabriel gary george gerald giovanni giulia grace greta hana hannah hans harry
    heather helen henrik henry hiroshi hugo ian ingrid isabel isabella ivan jack jacob james
    jan jane janet jason javier jean jennifer jessica joan joe johan johanna john jonathan
    jorge jose joseph joshua juan julia julian julie karen karl kate katherine kathleen
    kelly kenji kevin kim klaus kumar laura lauren lars laurent lea leo linda lisa lucas
    lucia luis luka lukas maria marie mario mark martin mary matteo matthew max maya megan
    mei melissa michael michelle miguel mohammed monica nancy natalia nathan nicholas nicola
    nina noah olga oliver olivia omar oscar pablo pamela patricia patrick paul paula pedro
    peter philip pierre pooja priya rachel rahul raj rebecca richard robert roberto ronald
    rosa ruth ryan sakura samuel sandra santiago sara sarah scott sean sebastian sergio
    sharon sophia sophie stefan stephanie stephen steven susan thomas timothy tom tyler
    valentina victor victoria vincent wei william xavier yuki yusuf zoe
    """.split()  # noqa: SIM905 (a word list reads better as text)
)

# Frequent family names, used only to recognise a lone capitalised token in a
# column whose name already says it holds surnames.
FAMILY_NAMES: frozenset[str] = frozenset(
    """
    anderson bauer becker bernard brown clark davis diaz dubois fischer garcia gonzalez
    hall harris hernandez jackson jansen johnson jones kim lee lewis lopez martin martinez
    miller moore muller nguyen patel perez petit rossi robinson rodriguez sanchez schmidt
    schneider singh smith taylor thomas thompson walker white williams wilson wright young
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
