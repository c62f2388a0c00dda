"""Compact lists of common given and family names, for the person-name detector.

Deliberately small (a few hundred names across English-, Spanish-, Portuguese-,
French-, German-, Italian-, Dutch-, Nordic-, Polish- and Turkish-speaking
countries plus common Arabic, Indian, Japanese and Chinese romanisations): the
detector needs a name to anchor "Firstname Lastname" values under a column name
that says nothing, not a census. Stored lower case, with their diacritics.
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
    olivia harper mason ethan abigail emily noah liam ava mia charlotte amelia evelyn
    josé maría lucía álvaro inés joaquín sofía martina alba hugo mateo valeria camila
    ximena manuel rafael miguel ángel jesús lorena
    jean-luc anne-marie céline hélène françois amélie benoît léa chloé manon louis
    gabriel jules théo zoé élise
    jürgen björn lena sören käthe matthias ute jonas leon finn mia emilia hanna lina
    giuseppe chiara niccolò federica giulia lorenzo alessandro leonardo francesca
    daan sanne bram femke joost anouk maarten sem lieke thijs
    łukasz małgorzata wojciech agnieszka paweł katarzyna zofia piotr krzysztof tomasz
    anna magdalena jakub kacper
    søren åsa bjørn ingrid lars sigrid mikkel astrid nils erik freja magnus
    mehmet ayşe emre zeynep elif burak mustafa ahmet fatma hüseyin emine
    joão thiago larissa gonçalo beatriz bruno gustavo felipe mariana luana
    haruto yui sota aoi ren hina yuto haruki riko sakura hiroshi takumi
    xiaoming jing hao yan zhiwei lei fang jun ying
    youssef layla khalid nour hamza ali hassan karim mariam amir
    aarav vihaan ananya diya rohan aditya neha sneha vikram anil sunil
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
    hughes fitzgerald o'connor baker murphy kelly
    fernández núñez ortega ruiz gómez sánchez díaz pérez romero torres ramírez flores
    lefèvre moreau girard rousseau bonnet chevalier durand leroy fontaine mercier
    müller schröder weiß hoffmann krämer groß wagner schulz koch richter wolf
    esposito bianchi ricci marino greco romano colombo bruno gallo conti
    jong berg bakker visser dijk smit mulder bos vos janssen
    wiśniewski kowalczyk wójcik nowak lewandowska lewandowski zieliński kowalski
    kamiński woźniak
    ørsted lindqvist hansen johansson nyström dahl andersson nilsson larsen olsen
    yılmaz çelik şahin demir kaya öztürk aydın arslan doğan
    silva santos oliveira conceição ferreira gonçalves souza pereira costa almeida
    sato suzuki takahashi tanaka watanabe ito yamamoto nakamura kobayashi
    wang li zhang liu chen huang zhao wu zhou
    al-sayed haddad nasser el-amin khoury mansour hassan ibrahim
    sharma gupta iyer reddy banerjee nair kumar mehta rao
    """.split()  # noqa: SIM905, RUF001 (a word list reads better as text; Turkish dotless i)
)
