"""Load Wan2.1 / Wan2.2 weights (diffusers' `WanTransformer3DModel`) into a CausalVideoDiT.

CausalVideoDiT is laid out like Wan with diffusers' parameter names, so the mapping is 1:1;
what this module adds is the config mapping, strict key/shape checks that name what is wrong,
the few naming variants a diffusers checkpoint can carry (fused q/k/v projections, the
`norm_added_q` key that diffusers itself ignores, non-persistent RoPE tables), and reading a
local diffusers folder (single or sharded safetensors, or a .bin). Nothing is ever
downloaded: `load_wan` reads local files or an in-memory diffusers model only.

    from resforce.wan.transformer import load_wan
    model = load_wan("/data/Wan2.1-T2V-1.3B-Diffusers", frames_per_chunk=3,
                     dtype=torch.bfloat16)

Timesteps: the converted model takes t in [0, 1] per chunk and embeds t * 1000 itself, so
`model(x, t)` matches Wan's `transformer(x, timestep=t * 1000, ...)` when all frames form one
chunk at one timestep (tests/wan/test_wan.py checks it to 1e-4 in float32).

Only text-to-video transformers are supported: image-conditioned variants (Wan2.1 I2V/FLF2V:
`image_dim`, `added_kv_proj_dim`, `pos_embed_seq_len`) add an image cross-attention branch
CausalVideoDiT does not have, and are refused with a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from resforce.wan.local import component_folder
from resforce.model.dit import CausalVideoDiT, DiTConfig

__all__ = ["config_from_diffusers", "convert_state_dict", "load_wan", "weight_dtype", "KEEP_IN_FP32",
           "WanConversionError", "check_wan_weights",
           "read_wan_shapes"]


class WanConversionError(ValueError):
    """A Wan checkpoint or config that cannot be mapped onto CausalVideoDiT."""


# config keys of WanTransformer3DModel that carry no information we need
_IGNORED_CONFIG_KEYS = {
    "rope_max_seq_len",  # size of diffusers' precomputed RoPE table; ours is computed on the fly
    "window_size",       # in some early configs; always (-1, -1) (global attention) for Wan
}
# image-conditioning (I2V / FLF2V) keys: only the "unset" value is supported
_UNSUPPORTED_CONFIG_KEYS = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")
_MAPPED_CONFIG_KEYS = {
    "patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
    "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps",
}


def config_from_diffusers(cfg_dict: Mapping, frames_per_chunk: int = 3, **overrides) -> DiTConfig:
    """DiTConfig for a WanTransformer3DModel config (its config.json, or `model.config`).

    `frames_per_chunk` is ours (Wan has none); `overrides` set any other DiTConfig field
    (e.g. attention_backend="flex", gradient_checkpointing="selective")."""
    cfg = dict(cfg_dict)
    cls = cfg.get("_class_name")
    if cls is not None and cls != "WanTransformer3DModel":
        raise WanConversionError(f"config is for {cls!r}, not a WanTransformer3DModel "
                                 "(for a pipeline folder, point at its 'transformer' subfolder)")
    for key in _UNSUPPORTED_CONFIG_KEYS:
        if cfg.get(key) is not None:
            raise WanConversionError(
                f"Wan config sets {key}={cfg[key]!r}: image-conditioned Wan (I2V/FLF2V) is not "
                "supported by CausalVideoDiT (it has no image cross-attention branch); use a "
                "text-to-video checkpoint")
    qk_norm = cfg.get("qk_norm", "rms_norm_across_heads")
    if qk_norm != "rms_norm_across_heads":
        raise WanConversionError(
            f"Wan config has qk_norm={qk_norm!r}; CausalVideoDiT implements only "
            "'rms_norm_across_heads' (RMSNorm over all heads of q and k, as in Wan2.1/2.2)")
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _MAPPED_CONFIG_KEYS
                     and k not in _IGNORED_CONFIG_KEYS and k not in _UNSUPPORTED_CONFIG_KEYS)
    if unknown:
        raise WanConversionError(f"unknown WanTransformer3DModel config keys {unknown}: this "
                                 "converter does not know what they change, refusing to guess")
    if "window_size" in cfg and tuple(cfg["window_size"]) != (-1, -1):
        raise WanConversionError(f"Wan config has window_size={cfg['window_size']}; only global "
                                 "attention (-1, -1) is supported")

    # WanTransformer3DModel's defaults, for keys a config may omit
    get = lambda k, d: d if cfg.get(k) is None else cfg[k]  # noqa: E731
    in_channels = int(get("in_channels", 16))
    fields = dict(
        in_channels=in_channels,
        out_channels=int(cfg.get("out_channels") or in_channels),  # diffusers: out or in
        patch_size=tuple(int(p) for p in get("patch_size", (1, 2, 2))),
        num_attention_heads=int(get("num_attention_heads", 40)),
        attention_head_dim=int(get("attention_head_dim", 128)),
        ffn_dim=int(get("ffn_dim", 13824)),
        num_layers=int(get("num_layers", 40)),
        freq_dim=int(get("freq_dim", 256)),
        text_dim=int(get("text_dim", 4096)),
        cross_attn_norm=bool(get("cross_attn_norm", True)),
        eps=float(get("eps", 1e-6)),
        rope_theta=10000.0,  # fixed in WanRotaryPosEmbed
        frames_per_chunk=int(frames_per_chunk),
        prediction="velocity",
        init="wan",
    )
    if fields["text_dim"] <= 0:
        raise WanConversionError(f"Wan config has text_dim={fields['text_dim']}; Wan always has "
                                 "a text cross-attention (text_dim > 0)")
    fields.update(overrides)
    out = DiTConfig(**fields)
    out.validate()
    return out


# ----------------------------------------------------------------------------- weights
def _is_ignored_key(key: str) -> bool:
    # diffusers' own _keys_to_ignore_on_load_unexpected, and its non-persistent RoPE tables
    return "norm_added_q" in key or key.startswith("rope.")


_I2V_KEY_MARKERS = ("add_k_proj", "add_v_proj", "norm_added_k", "to_added_kv",
                    "condition_embedder.image_embedder")


def _unfuse(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split diffusers' fused projections (attn.fuse_projections()) back into to_q/to_k/to_v."""
    out = {}
    for key, val in sd.items():
        for fused, parts in ((".to_qkv.", ("to_q", "to_k", "to_v")), (".to_kv.", ("to_k", "to_v"))):
            if fused in key:
                pre, post = key.split(fused)
                if val.shape[0] % len(parts):
                    raise WanConversionError(f"fused projection {key} of shape {tuple(val.shape)} "
                                             f"does not split into {len(parts)} equal parts")
                for name, piece in zip(parts, val.chunk(len(parts), dim=0)):
                    out[f"{pre}.{name}.{post}"] = piece
                break
        else:
            out[key] = val
    return out


def convert_state_dict(diffusers_sd: Mapping[str, torch.Tensor],
                       config: DiTConfig | None = None) -> dict[str, torch.Tensor]:
    """A CausalVideoDiT state dict from a WanTransformer3DModel one.

    Names map 1:1 (both use diffusers' names: norm2 is the affine cross-attention
    FP32LayerNorm, attn*.to_out.0, attn*.norm_q/norm_k are RMSNorms over all heads,
    ffn.net.0.proj / ffn.net.2); handled on top: a leading 'transformer.' / 'model.' prefix,
    fused to_qkv / to_kv projections, and keys diffusers itself ignores (norm_added_q, RoPE
    tables). Image-conditioning (I2V) weights are refused, naming them.

    With `config`, the result is checked against CausalVideoDiT(config): missing keys,
    unexpected keys and shape mismatches raise WanConversionError listing every one."""
    sd = dict(diffusers_sd)
    for prefix in ("transformer.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    i2v = sorted(k for k in sd if any(m in k for m in _I2V_KEY_MARKERS))
    if i2v:
        raise WanConversionError(
            f"checkpoint has image-conditioning (I2V) weights, which CausalVideoDiT does not "
            f"support: {_fmt(i2v)}")
    sd = _unfuse({k: v for k, v in sd.items() if not _is_ignored_key(k)})
    if config is not None:
        sd = {**new_action_weights(config, sd), **sd}
        check_state_dict(sd, config)
    return sd


def new_action_weights(config: DiTConfig, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zeros for the action embedder of an action model (model.action_kind) that Wan's weights
    lack: the action embedding then adds nothing, so the model starts as Wan and learns the
    actions by fine-tuning (Matrix-Game-style action conditioning of a pretrained model)."""
    if config.action_kind == "none":
        return {}
    prefix = "condition_embedder.action_embedder."
    return {k: torch.zeros(v.shape) for k, v in _meta_model(config).state_dict().items()
            if k.startswith(prefix) and k not in sd}


def _fmt(keys: list[str], limit: int = 20) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _meta_model(config: DiTConfig) -> CausalVideoDiT:
    with torch.device("meta"):
        return CausalVideoDiT(config)


def check_state_dict(sd: Mapping[str, torch.Tensor], config: DiTConfig) -> None:
    """Raise WanConversionError naming every missing / unexpected / mis-shaped key."""
    expected = {k: v.shape for k, v in _meta_model(config).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k])}"
                    for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_fmt(shapes)}")
    if problems:
        raise WanConversionError("Wan state dict does not fit CausalVideoDiT: " + "; ".join(problems))


# ----------------------------------------------------------------------------- files
_WEIGHT_FILES = ("diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.bin",
                 "model{v}.safetensors")


def resolve_dir(path: Path) -> Path:
    """The folder holding the transformer's config.json: `path` itself (or the folder of a file
    in it) or path/transformer (a Wan pipeline folder); the local-folder rule of wan/local.py."""
    if not path.exists():
        raise FileNotFoundError(f"Wan checkpoint path {str(path)!r} does not exist (load_wan "
                                "reads local files only; download the weights first)")
    return component_folder(path.parent if path.is_file() else path, "transformer",
                            "diffusers WanTransformer3DModel", "Wan folder")


def load_tensors(folder: Path, variant: str | None, load_file=None) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's weight files (single or sharded); `load_file(path)` reads
    one .safetensors file (default: safetensors' load_file, on the CPU)."""
    if load_file is None:
        from safetensors.torch import load_file
    v = f".{variant}" if variant else ""
    for pattern in _WEIGHT_FILES:
        name = pattern.format(v=v)
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
            absent = [s for s in shards if not (folder / s).is_file()]
            if absent:
                raise FileNotFoundError(f"{str(index)!r} lists shards missing from {str(folder)!r}: "
                                        f"{_fmt(absent)}")
            sd: dict[str, torch.Tensor] = {}
            for s in shards:
                sd.update(_load_one(folder / s, load_file))
            missing = sorted(set(weight_map) - set(sd))
            if missing:
                raise WanConversionError(f"shards in {str(folder)!r} lack keys listed in "
                                         f"{index.name}: {_fmt(missing)}")
            return sd
        if (folder / name).is_file():
            return _load_one(folder / name, load_file)
    wanted = [p.format(v=v) for p in _WEIGHT_FILES]
    raise FileNotFoundError(f"no Wan weights in {str(folder)!r}: looked for {wanted} and their "
                            f"'.index.json' (sharded) forms; found {sorted(os.listdir(folder))}")


def _load_one(file: Path, load_file) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return load_file(str(file))
    if getattr(load_file, "header_only", False):  # shapes of a .bin: memory-mapped, nothing read into memory
        sd = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
        return {k: torch.empty(v.shape, device="meta") for k, v in sd.items()}
    return torch.load(str(file), map_location="cpu", weights_only=True)


def _safetensors_header(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file as meta tensors of their shapes, from its JSON header
    alone (8 bytes of length, then the header): no tensor data is read."""
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise WanConversionError(f"{str(file)!r} is not a safetensors file (bad header length; "
                                     f"{size} bytes): a partial download?")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WanConversionError(f"{str(file)!r}: unreadable safetensors header ({e})") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise WanConversionError(f"{str(file)!r} is truncated: its header describes {8 + n + end} bytes, the "
                                 f"file has {size} (a partial download?)")
    return {k: torch.empty(v["shape"], device="meta") for k, v in header.items() if k != "__metadata__"}


_safetensors_header.header_only = True


def read_wan_shapes(path, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The raw (diffusers-named) tensors of a local Wan folder as meta tensors: names and shapes
    from the safetensors headers (a .bin is memory-mapped), no weights read or allocated."""
    return load_tensors(resolve_dir(Path(path).expanduser()), variant, load_file=_safetensors_header)


def check_wan_weights(path, config: DiTConfig, variant: str | None = None) -> None:
    """Fail fast on a Wan folder the trainer could not start from: weight files absent,
    truncated, or with keys / shapes that do not fit CausalVideoDiT(config). Reads the
    safetensors headers only (milliseconds, no allocation), so the trainer calls it before it
    builds a model or creates the run directory. Raises FileNotFoundError or WanConversionError
    naming the folder and every mismatch."""
    folder = resolve_dir(Path(path).expanduser())
    try:
        convert_state_dict(read_wan_shapes(folder, variant), config)
    except WanConversionError as e:
        raise WanConversionError(f"{folder}: {e}") from None


def _from_module(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg = getattr(model, "config", None)
    if cfg is None or type(model).__name__ != "WanTransformer3DModel":
        raise TypeError(f"load_wan takes a path or a diffusers WanTransformer3DModel, got "
                        f"{type(model).__name__}")
    # cloned: the CausalVideoDiT must not share storage with the diffusers model
    return dict(cfg), {k: v.detach().clone() for k, v in model.state_dict().items()}


KEEP_IN_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
"""diffusers' WanTransformer3DModel._keep_in_fp32_modules (less 'rope', whose tables we do not
load): a parameter stays float32 when one of these is a component of its dotted name, the
same match diffusers makes (model_loading_utils: `m in param_name.split('.')`)."""


def weight_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype load_wan gives parameter `name` when asked for `dtype` (a dtype narrower than
    float32 is not used for KEEP_IN_FP32 parameters)."""
    keep = dtype.itemsize < 4 and any(m in name.split(".") for m in KEEP_IN_FP32)
    return torch.float32 if keep else dtype


def load_wan(path_or_model, frames_per_chunk: int = 3, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None, variant: str | None = None,
             **config_overrides) -> CausalVideoDiT:
    """A CausalVideoDiT holding Wan's weights, in eval mode.

    `path_or_model`: a local diffusers WanTransformer3DModel folder (config.json plus
    diffusion_pytorch_model[.<variant>].safetensors, or sharded with its .index.json, or a
    .bin), a Wan pipeline folder (its 'transformer' subfolder is used), or an in-memory
    WanTransformer3DModel. Never downloads anything. Weights are cast to `dtype`, except
    those diffusers keeps in float32 (KEEP_IN_FP32: the time embedder, the AdaLN
    scale_shift_tables and the block norms), which stay float32 as in diffusers' bf16 Wan.
    The model computes its modulation, norms and RoPE in float32 and casts its input to the
    patch embedding's dtype itself (model/dit.py), so fp32 noise goes into a bf16 model. The
    model is built on the meta device and takes the loaded tensors, so a 14B model is not
    allocated twice. `config_overrides` go to config_from_diffusers (e.g. attention_backend)."""
    if isinstance(path_or_model, nn.Module):
        cfg_dict, raw = _from_module(path_or_model)
        where = f"in-memory {type(path_or_model).__name__}"
    else:
        folder = resolve_dir(Path(path_or_model).expanduser())
        try:
            cfg_dict = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise WanConversionError(f"{str(folder / 'config.json')!r} is not valid JSON: {e}") from e
        raw = load_tensors(folder, variant)
        where = str(folder)
    try:
        config = config_from_diffusers(cfg_dict, frames_per_chunk=frames_per_chunk, **config_overrides)
        sd = convert_state_dict(raw, config)
    except WanConversionError as e:
        raise WanConversionError(f"{where}: {e}") from None
    sd = {k: v.to(device=device, dtype=weight_dtype(k, dtype)) if v.is_floating_point() else v.to(device=device)
          for k, v in sd.items()}
    model = _meta_model(config)
    model.load_state_dict(sd, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # cannot happen with strict=True unless the model grows non-persistent buffers
        raise RuntimeError(f"tensors left uninitialised after loading Wan weights: {leftover}")
    return model.eval()
