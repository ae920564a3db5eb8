"""Which language a short chain of thought is in: the judge's lexicon (r1mega/judge/language.py) vs
langdetect (seeded), on 20 short math sentences in 7 Latin-script languages.

    pip install langdetect; python bench/language_detect.py

The sentences were written alongside the lexicon, so its score is optimistic; langdetect's misses show
why a statistical detector was not used on short, math-heavy sentences."""
import time
from langdetect import DetectorFactory, detect
from r1mega.judge.language import word_languages

DetectorFactory.seed = 0
CASES = [  # (text, its language)
    ("We add three and four, so the answer is seven.", "en"),
    ("Let x = 3 and y = 4. Then x + y = 7.", "en"),
    ("First compute 12 * 3 = 36, then subtract 5.", "en"),
    ("So the total is 42.", "en"),
    ("Check: 7 - 4 = 3, correct.", "en"),
    ("Wait, that is wrong. Try again: 2^5 = 32.", "en"),
    ("The sum of the roots is -b/a = 5.", "en"),
    ("Hence n = 10.", "en"),
    ("Nous devons calculer la somme de trois et quatre. La réponse est sept.", "fr"),
    ("Donc x = 3 et y = 4, alors x + y = 7.", "fr"),
    ("On calcule 12 * 3 = 36, puis on soustrait 5.", "fr"),
    ("Wir müssen drei und vier addieren, das ergibt sieben.", "de"),
    ("Also ist die Summe 42.", "de"),
    ("Calculamos la suma de tres y cuatro, que es siete.", "es"),
    ("Entonces x = 3 y y = 4, así que x + y = 7.", "es"),
    ("Sommiamo tre e quattro: il risultato è sette.", "it"),
    ("Quindi la somma è 42.", "it"),
    ("Somamos três e quatro, então a resposta é sete.", "pt"),
    ("We tellen drie en vier op, dus het antwoord is zeven.", "nl"),
    ("Dus de som is 42.", "nl"),
]
lex_ok = ld_ok = 0
t_lex = t_ld = 0.0
for text, lang in CASES:
    t0 = time.perf_counter()
    c = word_languages(text, "en")
    t_lex += time.perf_counter() - t0
    lex = c.most_common(1)[0][0] if c else None
    t0 = time.perf_counter()
    try:
        ld = detect(text)
    except Exception:
        ld = None
    t_ld += time.perf_counter() - t0
    lex_ok += lex == lang
    ld_ok += ld == lang
    if lex != lang or ld != lang:
        print(f"{lang}: lexicon={lex} langdetect={ld}  {text}")
n = len(CASES)
print(f"lexicon {lex_ok}/{n} ({1e3 * t_lex / n:.2f} ms each)  langdetect {ld_ok}/{n} ({1e3 * t_ld / n:.2f} ms each)")
