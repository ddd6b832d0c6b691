"""A reference of hi-ml-multimodal's BioViL / BioViL-T / CXR-BERT forward passes for the import tests.

Written for the tests from hi-ml's architecture (torchvision is not allowed here, so the torchvision-style ResNet is
built by hand): module and tensor names follow the published checkpoints, so ``state_dict()`` has exactly their
layout (``tests/data/biovil_image_state_dict.tsv`` checks BioViL's, tensor by tensor). The preprocessing mirrors
``create_chest_xray_transform_for_inference`` for inputs that need no resampling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# -- torchvision-style ResNet ----------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision ``ResNet(Bottleneck, layers)`` with hi-ml's forward (returns layer4's grid). ``widths`` lets tests
    build a small one in the same layout; ResNet-50 is ``layers=(3, 4, 6, 3), widths=(64, 128, 256, 512)``."""

    def __init__(self, layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem=64, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem
        for i, (n, w) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != w * 4:
                down = nn.Sequential(nn.Conv2d(inplanes, w * 4, 1, stride, bias=False), nn.BatchNorm2d(w * 4))
            blocks = [Bottleneck(inplanes, w, stride, down)] + [Bottleneck(w * 4, w) for _ in range(n - 1)]
            inplanes = w * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.n_layers = len(layers)
        self.fc = nn.Linear(inplanes, num_classes)  # in the checkpoint, unused by hi-ml's forward
        self.out_channels = inplanes

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class MLP(nn.Module):
    """hi-ml ``MLP(use_1x1_convs=True)``: conv1x1 (no bias) → BN → ReLU → conv1x1."""

    def __init__(self, inp, out, hidden):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                                   nn.Conv2d(hidden, out, 1, bias=True))

    def forward(self, x):
        return self.model(x)


# -- BioViL-T pooler (hi-ml VisionTransformerPooler, eval mode) ------------------------------------------------------
class _Attn(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.proj_q = nn.Linear(dim, dim, bias=False)
        self.proj_k = nn.Linear(dim, dim, bias=False)
        self.proj_v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        h = self.heads
        q = self.proj_q(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        k = self.proj_k(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        v = self.proj_v(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        a = ((q @ k.transpose(-2, -1)) * (C // h) ** -0.5).softmax(dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, C))


class _Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attn(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim)

    def forward(self, x, emb):
        x = x + self.attn(self.norm1(x) + emb)
        return x + self.mlp(self.norm2(x))


def _detr_sine(mask, embedding_dim, temperature=10000, scale=2 * math.pi):
    """DETR's normalised sine embedding of a [1, H, W] mask, as hi-ml's ``SinePositionEmbedding``."""
    B, H, W = mask.shape
    y = mask.cumsum(1, dtype=torch.float32)
    x = mask.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * scale
    x = x / (x[:, :, -1:] + 1e-6) * scale
    dim_t = torch.arange(embedding_dim, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / embedding_dim)
    px, py = x[:, :, :, None] / dim_t, y[:, :, :, None] / dim_t
    px = torch.stack((px[:, :, :, 0::2].sin(), px[:, :, :, 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[:, :, :, 0::2].sin(), py[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).view(B, H * W, embedding_dim * 2)


class VitPooler(nn.Module):
    def __init__(self, dim, grid, heads=8, blocks=3):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(blocks)])
        self.norm_post = nn.LayerNorm(dim, eps=1e-6)
        self.type_embed = nn.Parameter(torch.randn(2, 1, dim) * 0.02)
        self.register_buffer("pos_embed", _detr_sine(torch.ones(1, *grid), dim // 2), persistent=False)

    def forward(self, cur, prev=None):  # [B, C, H, W] each
        B, C, H, W = cur.shape
        x = cur.view(B, C, H * W).transpose(1, 2)
        pos = self.pos_embed.repeat(B, 1, 1)
        typ = self.type_embed[0].expand(B, H * W, -1)
        if prev is not None:
            x = torch.cat((x, prev.view(B, C, H * W).transpose(1, 2)), dim=1)
            pos = torch.cat((pos, pos), dim=1)
            typ = torch.cat((typ, self.type_embed[1].expand(B, H * W, -1)), dim=1)
        for blk in self.blocks:
            x = blk(x, pos + typ)
        x = self.norm_post(x)
        return x[:, :H * W].transpose(1, 2).reshape(B, C, H, W)


# -- image models ------------------------------------------------------------------------------------------------------
class ImageEncoder(nn.Module):
    def __init__(self, **resnet):
        super().__init__()
        self.encoder = ResNet(**resnet)


class MultiImageEncoder(ImageEncoder):
    def __init__(self, grid=(14, 14), dim=256, heads=8, blocks=3, **resnet):
        super().__init__(**resnet)
        self.backbone_to_vit = nn.Conv2d(self.encoder.out_channels, dim, 1, bias=False)
        self.vit_pooler = VitPooler(dim, grid, heads, blocks)
        self.missing_previous_emb = nn.Parameter(torch.randn(1, dim, 1, 1) * 0.02)


class ImageModel(nn.Module):
    """hi-ml ``ImageModel``: ``encoder`` + ``projector``; ``patch_grid`` = ``get_patchwise_projected_embeddings``."""

    def __init__(self, multi=False, joint=128, **kw):
        super().__init__()
        self.encoder = MultiImageEncoder(**kw) if multi else ImageEncoder(**kw)
        c = self.encoder.encoder.out_channels
        feat = 2 * self.encoder.backbone_to_vit.out_channels if multi else c
        self.projector = MLP(feat, joint, joint)
        self.multi = multi

    def features(self, x, prev=None):
        f = self.encoder.encoder(x)
        if not self.multi:
            return f
        cur = self.encoder.backbone_to_vit(f)
        if prev is None:
            B, _, H, W = cur.shape
            diff = self.encoder.missing_previous_emb.repeat(B, 1, H, W)
        else:
            diff = self.encoder.vit_pooler(cur, self.encoder.backbone_to_vit(self.encoder.encoder(prev)))
        return torch.cat([cur, diff], dim=1)

    @torch.no_grad()
    def patch_grid(self, x, prev=None):
        p = self.projector(self.features(x, prev))
        return F.normalize(p, dim=1).permute(0, 2, 3, 1)  # [B, H, W, D]

    @torch.no_grad()
    def global_embedding(self, x):
        return F.normalize(self.projector(self.features(x)).mean(dim=(2, 3)), dim=-1)


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, BatchNorm running statistics included (and a non-zero batch counter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 10000, (1,), generator=g)))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(1.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for name, p in module.named_parameters():
            if name.endswith("type_embed") or name.endswith("missing_previous_emb"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


# -- CXR-BERT ----------------------------------------------------------------------------------------------------------
VOCAB_WORDS = ["the", "left", "right", "lower", "upper", "lobe", "lung", "opacity", "pleural", "effusion", "small",
               "large", "heart", "size", "normal", "pneumothorax", "no", "is", "there", "consolidation", "edema",
               "basilar", "atelectasis", "mild", "moderate", "cardiomegaly", "apical", "mid", "zone", "and", "of"]


def write_vocab(path: Path) -> int:
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + VOCAB_WORDS
    toks += list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?-()")
    toks += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["##ing", "##s", "##al"]
    path.write_text("\n".join(toks) + "\n", encoding="utf-8")
    return len(toks)


class ProjectionHead(nn.Module):
    """CXR-BERT ``BertProjectionHead``: dense_to_hidden → GELU → LayerNorm(1e-12) → dense_to_output."""

    def __init__(self, hidden, proj):
        super().__init__()
        self.dense_to_hidden = nn.Linear(hidden, proj)
        self.LayerNorm = nn.LayerNorm(proj, eps=1e-12)
        self.dense_to_output = nn.Linear(proj, proj)

    def forward(self, x):
        return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(x))))


def make_cxr_bert_folder(folder: Path, projection_size=128, hidden=32, layers=2, heads=2, seed=0,
                         safetensors=False, max_positions=64):
    """A CXR-BERT-layout folder (config.json with model_type cxr-bert + auto_map, vocab.txt, tokenizer_config.json,
    pytorch_model.bin) with random weights; returns (BertForMaskedLM, head) to compute reference embeddings."""
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = write_vocab(folder / "vocab.txt")
    torch.manual_seed(seed)
    conf = BertConfig(vocab_size=n_vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=hidden * 2, max_position_embeddings=max_positions)
    mlm = BertForMaskedLM(conf).eval()
    head = ProjectionHead(hidden, projection_size).eval()
    with torch.no_grad():
        for p in list(mlm.parameters()) + list(head.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    state = {**mlm.state_dict(), **{"cls_projection_head." + k: v for k, v in head.state_dict().items()}}
    state = {k: v.clone().contiguous() for k, v in state.items()}  # untie shared embeddings for saving
    cfg = {**json.loads(conf.to_json_string()), "model_type": "cxr-bert", "architectures": ["CXRBertModel"],
           "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                        "AutoModel": "modeling_cxrbert.CXRBertModel"},
           "projection_size": projection_size}
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 64}))
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return mlm, head


@torch.no_grad()
def reference_text_embedding(folder: Path, mlm, head, phrases):
    """hi-ml's TextInferenceEngine: strip trailing !?., BertTokenizer, CLS of the last hidden state → head → L2."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(folder))  # vocab.txt + tokenizer_config.json, as hi-ml loads it
    assert tok.convert_tokens_to_ids("lung") != tok.unk_token_id  # the vocabulary was really read
    enc = tok([p.rstrip("!?.") for p in phrases], add_special_tokens=True, padding="longest", return_tensors="pt")
    out = mlm(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
    return F.normalize(head(out.hidden_states[-1][:, 0, :]), dim=1)


# -- preprocessing -----------------------------------------------------------------------------------------------------
def reference_input(u8: np.ndarray, crop: int) -> torch.Tensor:
    """hi-ml's ``load_image`` (min-max remap to uint8) + ``CenterCrop`` + ``ToTensor`` + ``ExpandChannels`` for an
    image whose short side already equals ``Resize``'s size (so ``Resize`` leaves it untouched)."""
    a = u8.astype(float)
    a -= a.min()
    a /= a.max()
    a = (a * 255).astype(np.uint8)
    h, w = a.shape
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    t = torch.from_numpy(a[top:top + crop, left:left + crop].astype(np.float32) / 255.0)[None]
    return t.repeat(3, 1, 1)[None]  # [1, 3, crop, crop]


def sample_image(rows=512, cols=512, seed=0) -> np.ndarray:
    """A smooth 8-bit radiograph-like image spanning 0..255."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    img = 0.6 * np.exp(-((xx - 0.35) ** 2 + (yy - 0.5) ** 2) / 0.05) + 0.6 * np.exp(
        -((xx - 0.7) ** 2 + (yy - 0.55) ** 2) / 0.04) + 0.15 * rng.random((rows, cols))
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * 255).astype(np.uint8)
