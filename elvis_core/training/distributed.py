"""The processes of a training run: one, or DDP under ``torchrun`` (single or multi-node).

``_init_distributed`` picks the device (``train.device``; ``cuda:LOCAL_RANK`` under torchrun) and, when
``WORLD_SIZE > 1``, initialises the process group from the environment (``env://``: NCCL on CUDA, else gloo);
``_barrier`` waits for all ranks; ``_tokenizer_from_rank0`` gives every rank rank 0's tokenizer (a WordPiece
vocabulary trained on rank 0 only). Re-exported by :mod:`elvis_core.training.trainer`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from elvis_core.errors import ConfigError


def _init_distributed(device_opt: str):
    """(rank, world, local_rank, device). Initialises the process group under torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_opt == "auto":
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    elif device_opt == "cuda" and world > 1:
        dev = torch.device(f"cuda:{local_rank}")
    else:
        try:
            dev = torch.device(device_opt)
        except RuntimeError as err:
            raise ConfigError(f"config key 'train.device': {err}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config key 'train.device' asks for CUDA but no CUDA device is available")
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return rank, world, local_rank, dev


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _tokenizer_from_rank0(tokenizer, world: int, rank: int):
    """All ranks use rank 0's tokenizer (sent as its JSON text)."""
    if world == 1:
        return tokenizer
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    box = [(tokenizer.backend_tokenizer.to_str(), int(tokenizer.model_max_length)) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if rank == 0:
        return tokenizer
    text, max_len = box[0]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text), unk_token="[UNK]",
                                   pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_len)
