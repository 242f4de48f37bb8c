"""data/windows.py: the one place that cuts, packs and pads token ids."""
import pytest
import torch

from fusedlens.data.windows import TokenStream, batched, corpus_ids, pad_right, split_tail, windows


@pytest.mark.parametrize("n,seq_len", [(1, 4), (7, 3), (9, 3), (10, 10), (11, 10)])
def test_windows_cover_every_id_once(n, seq_len):
    ids = torch.randint(0, 1000, (n,))
    plain = windows(ids, seq_len)
    assert torch.equal(torch.cat(plain), ids) and all(0 < w.numel() <= seq_len for w in plain)
    # overlap=1: each id but the last has its successor in the same window (a target)
    lapped = windows(ids, seq_len, overlap=1)
    pairs = {(int(w[i]), int(w[i + 1]), int(start + i)) for w, start in zip(lapped, range(0, n, seq_len))
             for i in range(w.numel() - 1)}
    assert len(pairs) == n - 1 and {p[2] for p in pairs} == set(range(n - 1))


def test_bad_windows():
    with pytest.raises(ValueError):
        windows(torch.arange(5), 0)
    with pytest.raises(ValueError):
        windows(torch.arange(5), 2, overlap=2)


def test_token_stream_wraps_and_resumes():
    ids = torch.arange(10)
    s = TokenStream(ids, 4)
    assert torch.equal(s.next(8), torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert torch.equal(s.next(4), torch.tensor([[8, 9, 0, 1]])) and s.position == 2
    assert torch.equal(TokenStream(ids, 4, position=s.position).next(4), s.next(4))


def test_split_tail_and_errors():
    head, tail = split_tail(torch.arange(10), 3)
    assert torch.equal(head, torch.arange(7)) and torch.equal(tail, torch.arange(7, 10))
    for bad in (0, 10):
        with pytest.raises(ValueError, match="eval_tokens"):
            split_tail(torch.arange(10), bad)


def test_pad_right_and_batched():
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    ids, mask = pad_right(seqs)
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]))
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]


def test_corpus_ids_forms_and_errors():
    ids = torch.arange(20)
    assert torch.equal(corpus_ids(None, ids, 5), torch.arange(5))
    with pytest.raises(ValueError, match="corpus: 20 tokens, need 21"):
        corpus_ids(None, ids, 21)
    with pytest.raises(ValueError, match="text needs a model with a tokenizer"):
        corpus_ids(None, "some text")
    with pytest.raises(ValueError, match="1-D integer tensor"):
        corpus_ids(None, torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        corpus_ids(None, torch.zeros(0, dtype=torch.long))
