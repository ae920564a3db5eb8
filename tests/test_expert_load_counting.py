"""The expert loads a training step counts (DeepSeek-V3's aux-loss-free routing-bias update and the
load metrics) are the real tokens' choices, whatever the padding and packing: pad slots (negative
document ids) are left out, and an MTP module counts only positions whose token ahead lies in the
same document. Before, every slot counted, so the same documents padded or packed another way
moved the biases differently (GRPO's packed and padded updates, `rl.pack_tokens`, EP2 against one
process: tests/test_grpo_packed.py covers that path)."""
import torch

from r1mega.config import Config, ModelConfig, validate
from r1mega.models.deepseek_v3.balance import moe_layers, start_counting
from r1mega.models.stage import IGNORE_INDEX, load_counted
from r1mega.parallel.layout import single_process_state
from r1mega.train.lm_step import lm_forward_backward
from r1mega.train.setup import build_chunks, init_weights

DOCS = [[5, 9, 14, 3, 7, 22], [40, 41, 2, 8], [60, 61, 62, 63, 64, 65, 66]]


def labels_and_positions(ids, docs) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [b, s] with document ids: labels (the next token within each document) and positions."""
    same = torch.zeros_like(docs, dtype=torch.bool)
    same[:, :-1] = (docs[:, 1:] == docs[:, :-1]) & (docs[:, :-1] >= 0)
    labels = torch.where(same, torch.roll(ids, -1, 1), torch.full_like(ids, IGNORE_INDEX))
    pos = torch.zeros_like(ids)
    for r in range(ids.shape[0]):
        for j in range(1, ids.shape[1]):
            pos[r, j] = pos[r, j - 1] + 1 if docs[r, j] == docs[r, j - 1] else 0
    return labels, pos


def loads_of(chunks, ids, docs) -> torch.Tensor:
    """Every MoE layer's counted expert choices of one training forward-backward over rows [b, s]
    with document ids."""
    labels, pos = labels_and_positions(ids, docs)
    start_counting(chunks)
    lm_forward_backward(chunks, single_process_state(), ids, labels, 1, {"mtp_weight": 0.3}, attn_mask=docs,
                        position_ids=pos)
    return torch.stack([m.expert_load.clone() for _, m in moe_layers(chunks)])


def layouts():
    """The three documents packed into one row, and each in its own row right-padded (-1 ids), with
    more padding after: the same real tokens."""
    packed_ids = torch.tensor([sum(DOCS, [])])
    packed_docs = torch.tensor([[d for d, doc in enumerate(DOCS) for _ in doc]])
    width = 10
    rows_ids = torch.tensor([doc + [0] * (width - len(doc)) for doc in DOCS])
    rows_docs = torch.tensor([[0] * len(doc) + list(range(-1, -1 - width + len(doc), -1)) for doc in DOCS])
    return (packed_ids, packed_docs), (rows_ids, rows_docs)


def test_loads_count_real_tokens_whatever_the_padding_and_packing():
    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=3, num_mtp_layers=1)), 1)
    chunks = build_chunks(cfg, single_process_state())
    init_weights(chunks, seed=3)
    chunks.train()
    (pi, pd), (ri, rd) = layouts()
    packed, rows = loads_of(chunks, pi, pd), loads_of(chunks, ri, rd)
    k = cfg.model.num_experts_per_tok
    real = sum(len(d) for d in DOCS)
    main_layers = len(moe_layers(chunks)) - 1  # the last MoE layer is the MTP module's
    assert packed[:main_layers].sum() == rows[:main_layers].sum() == main_layers * real * k
    # MTP at depth 1: a document's last token looks past its end (its input is the next document's
    # first token, or a pad's): not counted
    assert packed[-1].sum() == rows[-1].sum() == (real - len(DOCS)) * k
    assert torch.equal(packed, rows), (packed, rows)


def test_load_counted_by_hand():
    docs = torch.tensor([[0, 0, 0, 1, 1, -6, -7], [-1, -2, 0, 0, 0, 0, -7]])
    assert torch.equal(load_counted(None, docs), docs >= 0)
    assert load_counted(None, None) is None and load_counted(None, None, 1) is None
    mtp = torch.tensor([[1, 1, 0, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(load_counted(None, docs, 1), mtp)
    # a batch's own choice (GRPO: only the trained sequences) narrows it further
    mine = torch.ones_like(docs, dtype=torch.bool)
    mine[1, 4:] = False
    # (and at depth 1 the position before an uncounted one: its input would be that token)
    assert torch.equal(load_counted(mine, docs, 1), mtp & torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0]]).bool())
    assert torch.equal(load_counted(mine, docs), mine)


def test_balance_loss_of_a_row_ignores_its_padding():
    """DeepSeek-V3's sequence-wise balance loss (model.balance_alpha) over a padded row: its T is the
    row's real tokens, so more padding changes neither the loss nor any gradient (it counted the pad
    slots as tokens of the sequence before)."""
    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=3, num_mtp_layers=1)), 1)
    chunks = build_chunks(cfg, single_process_state())
    init_weights(chunks, seed=4)
    chunks.train()
    out = []
    for width in (10, 23):
        ids = torch.tensor([doc + [0] * (width - len(doc)) for doc in DOCS])
        docs = torch.tensor([[0] * len(doc) + list(range(-1, -1 - width + len(doc), -1)) for doc in DOCS])
        for p in chunks.parameters():
            p.grad = None
        labels = torch.where(docs >= 0, torch.roll(ids, -1, 1), torch.full_like(ids, IGNORE_INDEX))
        labels[torch.arange(len(DOCS)), torch.tensor([len(d) - 1 for d in DOCS])] = IGNORE_INDEX
        step = lm_forward_backward(chunks, single_process_state(), ids, labels, 1,
                                   {"mtp_weight": 0.3, "balance_alpha": 0.5}, attn_mask=docs)
        aux = sum(float(m.aux_loss_sum) for _, m in moe_layers(chunks))
        out.append((step.loss, aux, {n: p.grad.clone() for n, p in chunks.named_parameters() if p.grad is not None}))
    (loss_a, aux_a, grads_a), (loss_b, aux_b, grads_b) = out
    assert aux_a > 0 and abs(aux_a - aux_b) < 1e-6 * aux_a and abs(loss_a - loss_b) < 1e-6
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_mtp_loss_of_packed_documents_equals_each_in_its_own_row():
    """The MTP module at depth k trains position i on token i + k + 1 from token i + k: a document's
    last positions packed before another one learned the next document's tokens (one extra term per
    boundary, SFT's packed mtp_loss 5.68 against 5.43 unpacked). Those labels are ignored now."""
    from r1mega.models.stage import mtp_labels

    cfg = validate(Config(model=ModelConfig(vocab_size=128, num_layers=3, num_mtp_layers=2)), 1)
    chunks = build_chunks(cfg, single_process_state())
    init_weights(chunks, seed=3)
    chunks.eval()

    def mtp_losses(ids, docs):
        labels, pos = labels_and_positions(ids, docs)
        with torch.no_grad():
            out = chunks[0](ids, labels=labels, attn_mask=docs, position_ids=pos)
        return [(loss.sum(), int((mtp_labels(labels, docs, k) != IGNORE_INDEX).sum()))
                for k, loss in enumerate(out.mtp_token_loss, start=1)]

    (pi, pd), (ri, rd) = layouts()
    packed, rows = mtp_losses(pi, pd), mtp_losses(ri, rd)
    for k, ((p_sum, p_n), (r_sum, r_n)) in enumerate(zip(packed, rows), start=1):
        assert p_n == r_n == sum(max(0, len(d) - 1 - k) for d in DOCS), (k, p_n, r_n)
        torch.testing.assert_close(p_sum, r_sum, rtol=1e-5, atol=1e-5)
