"""Function words (and the commonest words of arithmetic) of the Latin-script languages that
language.py tells apart. A word may belong to several languages; it scores a point for each."""
from __future__ import annotations

_WORDS = {
    "en": """the and of to is that it we this with for are be so then have has which what not can if
        there from by as an at or was will our let first number each since but all one two three four
        five six seven eight nine ten get need now add sum total answer equals equal therefore thus
        hence because when here must find compute calculate gives give result step next wait check
        do does how they you me my its were been would should could also into than only just more
        plus minus times divided by over same other way think about right yes no means""",
    "fr": """le la les des du une un est et nous donc pour que qui dans sur avec pas sont ce cette il elle
        on au aux mais ou alors faut puis réponse somme égal égale calculer ajouter deux trois quatre
        cinq six sept huit neuf dix nombre ensuite ici comme très plus moins fois aussi être avons
        faire fait je vous ils leur sa son ses mes tout tous résultat étape vérifier""",
    "de": """der die das und ist nicht ein eine zu den dem mit von auf für wir es sich auch dann also
        wenn oder aber sind zwei drei vier fünf sechs sieben acht neun zehn summe antwort ergibt gleich
        berechnen zahl ich du sie ihr haben hat wird werden noch nur mehr weil jetzt hier schritt
        ergebnis prüfen addieren plus minus mal durch""",
    "es": """el los las que es y en del por con una un para no se su al lo como más pero entonces suma
        respuesta dos tres cuatro cinco seis siete ocho nueve diez igual número calcular tenemos
        debemos luego aquí así también ser hacer hay este esta esto resultado paso verificar sumar""",
    "it": """il lo gli che è e di per una un sono con non del della allora quindi somma risposta due tre
        quattro cinque sei sette otto nove dieci uguale numero calcolare abbiamo dobbiamo poi qui così
        anche essere fare questo questa risultato passo verificare sommare più meno""",
    "pt": """o os as que é e de do da em um uma para com não por mais então soma resposta dois três quatro
        cinco seis sete oito nove dez igual número calcular temos isso devemos depois aqui assim também
        ser fazer este esta resultado passo verificar somar""",
    "nl": """de het een en van is dat niet op te zijn met voor er we wij dan dus som antwoord twee drie
        vier vijf zes zeven acht negen tien gelijk getal berekenen ook nu hier maar als wordt worden
        heeft hebben resultaat stap controleren optellen""",
}
LATIN_LANGUAGES = tuple(_WORDS)
LATIN_LEXICON: dict[str, tuple[str, ...]] = {}
for _lang, _text in _WORDS.items():
    for _w in sorted(set(_text.split())):
        LATIN_LEXICON[_w] = (*LATIN_LEXICON.get(_w, ()), _lang)

# mathematical function names written without a backslash: neutral, like the LaTeX commands
MATH_WORDS = frozenset("sin cos tan cot sec csc log ln exp max min mod gcd lcm lim det arg".split())
