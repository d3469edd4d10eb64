"""Training on documents that end in end-of-text (train_tiny.py --docs, mini_dlm/data.py).
python -m pytest -q tests/test_docs.py"""

import torch

import train_tiny
from mini_dlm.plumbing.checkpoint import load_checkpoint
from mini_dlm.data import document_rows, get_batch, prepare_data, split_documents, split_text
from mini_dlm.diffusion import evaluate
from conftest import tiny_model
from test_cli import TINY, fails_cleanly


def test_split_documents():
    text = "A:\nx y\n\nB:\ny\n\n\nC:\nz\n\n\n"
    assert split_documents(text) == ["A:\nx y", "B:\ny", "C:\nz"]
    assert split_documents("one===two===", "===") == ["one", "two"]


def unpad(rows, eot):
    """Rows back to the token stream they encode: each row up to and including its first eot."""
    out = []
    for r in rows.tolist():
        out += r[:r.index(eot) + 1] if eot in r else r
    return out


def test_document_rows_end_and_pad_with_eot(tokenizer):
    docs = ["ROMEO:\nHow now?", "JULIET:\n" + "O Romeo, Romeo! " * 12, "All:\nAy."]
    L, eot = 16, tokenizer.eot_id
    rows = document_rows(tokenizer, docs, L)
    ids = [tokenizer.encode(d) for d in docs]
    assert rows.dtype == torch.int32 and rows.shape[1] == L
    assert len(rows) == sum(-(-(len(i) + 1) // L) for i in ids)  # ceil((n + 1) / L) rows per document
    assert unpad(rows, eot) == [t for i in ids for t in i + [eot]]  # nothing lost, every document ended
    first = rows[0].tolist()
    n = len(ids[0])
    assert first[:n] == ids[0] and first[n:] == [eot] * (L - n)  # a short document: ids, then eot padding
    long_rows = rows[1:-1]
    assert len(long_rows) >= 2 and (long_rows[:-1] != eot).all()  # a long one ends only in its last row


def test_shipped_corpus_rows_are_speeches(corpus, tokenizer):
    train, _ = split_text(corpus)
    docs = split_documents(train)
    assert docs[0].startswith("First Citizen:\n") and all("\n\n" not in d for d in docs)
    rows = document_rows(tokenizer, docs[:50], 65)
    ends = rows == tokenizer.eot_id  # (N, 65)
    assert int(ends.any(dim=1).sum()) == 50  # every speech ends exactly once ...
    first = ends.int().argmax(dim=1)
    after = torch.arange(65)[None, :] >= first[:, None]
    assert (ends | ~after | ~ends.any(dim=1, keepdim=True)).all()  # ... and only padding follows its end


def test_prepare_data_docs_and_packed(corpus_file, tmp_path):
    tok, train, val = prepare_data(corpus_file, 300, str(tmp_path), 32)
    assert train.dim() == 1 and val.dim() == 1  # the default stays packed
    tok2, rows, vrows = prepare_data(corpus_file, 300, str(tmp_path), 32, doc_sep="\n\n")
    assert tok2.fingerprint() == tok.fingerprint()
    assert rows.shape[1] == vrows.shape[1] == 33 and len(rows) > len(vrows) > 0
    assert (rows == tok.eot_id).any() and (train != tok.eot_id).all()


def test_get_batch_and_evaluate_take_rows():
    rows = torch.arange(10 * 9, dtype=torch.int32).view(10, 9)
    batch = get_batch(rows, 6, 9, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert batch.shape == (6, 9) and all(any(torch.equal(b, r.long()) for r in rows) for b in batch)
    model = tiny_model("mdm", vocab_size=128, seq_len=8)
    a, b = evaluate(model, rows % 100, 8, max_windows=4), evaluate(model, rows % 100, 8, max_windows=4)
    assert a == b and a["nats"] > 0


def test_train_docs_end_to_end_and_resume(corpus_file, tmp_path, capsys):
    out = str(tmp_path)
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--max-iters", "4", "--eval-interval", "2", "--docs"])
    printed = capsys.readouterr().out
    assert "rows of 33 (documents ended and padded with end-of-text)" in printed and "doc_sep        = '\\n\\n'" in printed
    _, _, ckpt = load_checkpoint(f"{out}/ckpt.pt")
    assert ckpt["train_config"]["docs"] is True and ckpt["train_config"]["doc_sep"] == "\n\n"
    train_tiny.main(TINY + ["--data", corpus_file, "--out-dir", out, "--max-iters", "6", "--eval-interval", "100",
                            "--resume"])  # no --docs: the checkpoint's data mode wins
    assert "rows of 33" in capsys.readouterr().out


def test_doc_sep_errors(corpus_file, tmp_path, capsys):
    fails_cleanly(train_tiny.main, TINY + ["--data", corpus_file, "--out-dir", str(tmp_path), "--docs", "--doc-sep", ""],
                  capsys, "--doc-sep must not be empty")
    fails_cleanly(train_tiny.main, TINY + ["--data", corpus_file, "--out-dir", str(tmp_path), "--docs", "--doc-sep",
                                           "\\x"], capsys, "bad escape")
