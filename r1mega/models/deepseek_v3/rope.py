"""DeepSeek's rotary embedding lives in the shared `r1mega.models.rope` (students use it too)."""
from r1mega.models.rope import RotaryEmbedding, inv_freq_and_mscale, softmax_scale, yarn_mscale  # noqa: F401
