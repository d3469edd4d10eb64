"""
Checkpoints: one file holding everything sample.py needs (weights, model config, tokenizer) and
everything --resume needs (optimizer state, step, the training flags).

Written atomically and loaded with torch.load(weights_only=True) (mini_dlm/plumbing/files.py):
Ctrl-C or a full disk never leaves a half-written checkpoint, and loading one cannot run code.
"""

from dataclasses import asdict

from mini_dlm.conversion.token_shift import TokenShiftTransformer
from mini_dlm.model import ModelConfig, Transformer
from mini_dlm.plumbing.files import atomic_save, safe_load
from mini_dlm.tokenizer import Tokenizer

FORMAT = "mini_dlm/1"


def save_checkpoint(path, model, tokenizer, step, optimizer=None, train_config=None, val=None):
    atomic_save({
        "format": FORMAT,
        "model": model.state_dict(),
        "model_config": asdict(model.config),
        "tokenizer": tokenizer.to_dict(),
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train_config": train_config or {},
        "val": val,  # last validation figures, for the record
    }, path)


def new_model(cfg):
    """A freshly initialised model of config cfg: the Transformer, or its token-shift subclass."""
    return (TokenShiftTransformer if cfg.token_shift else Transformer)(cfg)


def load_checkpoint(path, device="cpu", flag=None):
    """-> (model in eval mode on device, tokenizer, the raw checkpoint dict). Errors name flag,
    the command-line flag path came from, if given."""
    who = f"{flag} {path}" if flag else path
    ckpt = safe_load(path, "checkpoint", flag)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{who}: not a mini_dlm checkpoint (expected format {FORMAT!r})")
    try:
        model = new_model(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        tokenizer = Tokenizer.from_dict(ckpt["tokenizer"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{who}: a damaged mini_dlm checkpoint ({str(e).splitlines()[0][:100]})") from None
    return model.to(device).eval(), tokenizer, ckpt
