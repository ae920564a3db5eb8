"""How much of a response the judge reads (issue 22: responses built to stall the judge).

Every extraction in r1mega.judge is linear in the text it reads (str.find/rfind, one pass over
braces or lines; no regex that backtracks over tags), and it reads at most MAX_RESPONSE_CHARS:
a longer response is judged as one with no answer, no valid format, no code and language share 0
(every consumer -- RL rewards, `r1mega eval`, the rejection filters -- sees the same verdict).
2**20 characters is four times DeepSeek-R1's longest rollouts (64K tokens at ~4 characters each).

An extracted final answer longer than MAX_ANSWER_CHARS is compared only as a string: math-verify's
parser (sympy) is superlinear on long expressions, and no benchmark answer is that long.
"""
MAX_RESPONSE_CHARS = 1 << 20
MAX_ANSWER_CHARS = 1000
