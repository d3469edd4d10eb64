"""
AR-to-diffusion conversion (RND1, SDAR, Fast-dLLM v2; train_tiny.py --init-from, notes 09):
start the mask predictor from the weights of an AR checkpoint of the same shape and tokenizer,
then train it with the diffusion (or block-diffusion) objective. The objective, block size,
context and dropout may differ: none of them is a weight (RoPE has no parameters), so an AR
model's weights serve a mask predictor as they are.
"""

from mini_dlm.plumbing.checkpoint import load_checkpoint

SHAPE = ("n_layer", "n_head", "n_embd")  # what the weights fix


def load_init(path, cfg):
    """--init-from: (weights, tokenizer) of a trained checkpoint whose Transformer has the shape
    of the ModelConfig cfg; ValueError naming the flags otherwise."""
    source, tokenizer, _ = load_checkpoint(path, flag="--init-from")
    theirs, mine = [getattr(source.config, k) for k in SHAPE], [getattr(cfg, k) for k in SHAPE]
    if theirs != mine:
        theirs, mine = (" ".join(f"--{k.replace('_', '-')} {x}" for k, x in zip(SHAPE, v)) for v in (theirs, mine))
        raise ValueError(f"--init-from {path}: its model is {theirs}, this run's {mine}: give the checkpoint's shape")
    return source.state_dict(), tokenizer


def check_init_tokenizer(path, theirs, mine):
    """ValueError unless the --init-from checkpoint's tokenizer maps ids to bytes as this run's does."""
    if theirs.fingerprint() != mine.fingerprint():
        raise ValueError(f"--init-from {path}: its tokenizer ({theirs.kind}, {theirs.vocab_size} tokens) is not "
                         f"this run's ({mine.kind}, {mine.vocab_size} tokens): train with the --data, --vocab-size "
                         "and --tokenizer it was trained with")
