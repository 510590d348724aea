# Modeling code of an acur repository written by cur4llm (build_acur_repo, quantize).
# Generated from cur4llm's libcur4llm/templates/modeling_acur.py for model_type "{{BASE_MODULE}}".
#
# The model is transformers' own {{PREFIX}}ForCausalLM; only the Linear layers
# that config.json's "acur" section lists are swapped for AcurLinear modules
# whose tensors carry exactly the names stored in the safetensors files:
#
#   kind "cur"   y = C (U (R x)) + bias          C [out, k], U [k, k], R [k, in]
#                (folded: y = CU (R x) + bias), plus row_indices / col_indices
#                (int64 [k]: R = W[rows, :], C = W[:, cols] of the original W)
#   kind "svd"   y = A (B x) + bias              ALinear.weight [out, k],
#                BLinear.weight [k, in], ALinear.bias [out]
#   kind "dense" y = W x + bias                  weight [out, in], bias [out]
#                (listed only when its weight is stored packed)
#   kind "skeleton_row"  W_I [k, in], X_rest [out - k, k], row_index (int64 [out]),
#                bias [out]: t = W_I x, u = [t ; X_rest t]; output row_index[p]
#                is u[p] (row_index lists the kept rows first), then + bias
#   kind "skeleton_col"  W_J [out, k], Z_rest [k, in - k], col_index (int64 [in]),
#                bias [out]: v = x[col_index]; y = W_J (v[:k] + Z_rest v[k:]) + bias
#
# config.json's "layer_shapes" (one object per decoder layer, written when a
# module method of cur4llm narrowed layers) gives a layer's MLP width
# "intermediate_size": its gate_proj / up_proj / fc1 get that many output
# features and its down_proj / fc2 that many input features (plain nn.Linear).
# "qk_head_dim" and "v_head_dim" narrow the attention: q_proj / k_proj give
# qk_head_dim per head, v_proj / o_proj v_head_dim per head, and the layer's
# attention is AcurAttention (below). "qk_dims" lists, per KV head, the base
# head dimension of each kept query/key dimension: its rotary frequency (LLaMA
# family: kept in pairs, the first half's dimensions then the same + head_dim/2).
# The attention scale stays 1/sqrt(head_dim) of the base model.
#
# A tensor listed in a layer's "quantized" list is stored packed as
# <name>.qweight (uint8 codes, little-endian bit stream per row), <name>.scales
# and <name>.zeros (fp16, one per row and group of group_size columns), with
# w = scales * (q - zeros); from_pretrained dequantizes it once after loading.
# An activation-aware format ("quantization" has "activation_aware": true, e.g.
# awq_int4) also stores <name>.input_scales (fp16, one per column), and
# w = scales * (q - zeros) * input_scales, computed in float32.

import torch
import torch.nn.functional as F
from torch import nn
from transformers import {{PREFIX}}ForCausalLM

from .configuration_acur_{{FAMILY}} import Acur{{PREFIX}}Config


def _unpack_codes(packed, bits, cols):
    """uint8 [rows, ceil(cols * bits / 8)] -> integer codes [rows, cols] (int32)."""
    rows = packed.shape[0]
    if bits == 8:
        return packed[:, :cols].to(torch.int32)
    if bits == 4:
        codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1)
        return codes.reshape(rows, -1)[:, :cols].to(torch.int32)
    if bits == 6:
        # Four codes in three bytes.
        pad = (-packed.shape[1]) % 3
        if pad:
            packed = torch.cat([packed, packed.new_zeros(rows, pad)], dim=1)
        b = packed.to(torch.int32).reshape(rows, -1, 3)
        b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
        codes = torch.stack(
            (b0 & 63, (b0 >> 6) | ((b1 & 15) << 2), (b1 >> 4) | ((b2 & 3) << 4), b2 >> 2), dim=-1
        )
        return codes.reshape(rows, -1)[:, :cols]
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    stream = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 1
    stream = stream.reshape(rows, -1)[:, : cols * bits].reshape(rows, cols, bits)
    weights = torch.ones(bits, device=packed.device, dtype=torch.int32) << torch.arange(
        bits, device=packed.device, dtype=torch.int32
    )
    return (stream * weights).sum(-1)


class PackedTensor(nn.Module):
    """A [rows, cols] matrix stored as packed integer codes with fp16 scales and zero points."""

    def __init__(self, rows, cols, bits, group_size, activation_aware=False):
        super().__init__()
        self.rows, self.cols, self.bits = rows, cols, bits
        self.group_size = group_size if group_size and group_size > 0 else cols
        groups = -(-cols // self.group_size)
        self.register_buffer("qweight", torch.zeros(rows, -(-cols * bits // 8), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(rows, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(rows, groups, dtype=torch.float16))
        if activation_aware:
            self.register_buffer("input_scales", torch.ones(cols, dtype=torch.float16))
        else:
            self.input_scales = None

    def dequantize(self, dtype):
        q = _unpack_codes(self.qweight, self.bits, self.cols).to(torch.float32)
        group = torch.arange(self.cols, device=q.device) // self.group_size
        scales = self.scales.to(torch.float32).index_select(1, group)
        zeros = self.zeros.to(torch.float32).index_select(1, group)
        w = scales * (q - zeros)
        if self.input_scales is not None:
            w = w * self.input_scales.to(torch.float32).unsqueeze(0)
        return w.to(dtype)


def _tensor_names(spec):
    """(relative name, shape, is_index) of every tensor a layer of `spec` stores."""
    kind, n_in, n_out = spec["kind"], spec["in_features"], spec["out_features"]
    names = []
    if kind == "cur":
        k = spec["rank"]
        if spec.get("folded", False):
            names.append(("CU", (n_out, k), False))
        else:
            names += [("C", (n_out, k), False), ("U", (k, k), False)]
        names.append(("R", (k, n_in), False))
        if spec.get("bias", False):
            names.append(("bias", (n_out,), False))
        if spec.get("indices", False):
            names += [("row_indices", (k,), True), ("col_indices", (k,), True)]
    elif kind == "svd":
        k = spec["rank"]
        names += [("ALinear.weight", (n_out, k), False), ("BLinear.weight", (k, n_in), False)]
        if spec.get("bias", False):
            names.append(("ALinear.bias", (n_out,), False))
    elif kind == "dense":
        names.append(("weight", (n_out, n_in), False))
        if spec.get("bias", False):
            names.append(("bias", (n_out,), False))
    elif kind == "skeleton_row":
        k = spec["rank"]
        names += [("W_I", (k, n_in), False), ("X_rest", (n_out - k, k), False), ("row_index", (n_out,), True)]
        if spec.get("bias", False):
            names.append(("bias", (n_out,), False))
    elif kind == "skeleton_col":
        k = spec["rank"]
        names += [("W_J", (n_out, k), False), ("Z_rest", (k, n_in - k), False), ("col_index", (n_in,), True)]
        if spec.get("bias", False):
            names.append(("bias", (n_out,), False))
    else:
        raise ValueError(
            f'acur layer kind "{kind}" is not known to this modeling code '
            "(known: cur, svd, dense, skeleton_row, skeleton_col)"
        )
    return names


class AcurLinear(nn.Module):
    """A Linear layer as cur4llm stored it (see the file comment for the kinds)."""

    def __init__(self, spec, quantization):
        super().__init__()
        self.kind = spec["kind"]
        self.in_features = spec["in_features"]
        self.out_features = spec["out_features"]
        self.rank = spec.get("rank")
        self._inverse = None  # skeleton_row: (row_index, its version, inverse permutation)
        packed = set(spec.get("quantized", []))
        for name, shape, is_index in _tensor_names(spec):
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            if name in packed:
                if quantization is None:
                    raise ValueError('config.json: a layer lists "quantized" tensors but "acur" has no "quantization"')
                owner.add_module(leaf, PackedTensor(shape[0], shape[1], quantization["bits"],
                                                    quantization.get("group_size", 0),
                                                    bool(quantization.get("activation_aware", False))))
            elif is_index:
                owner.register_buffer(leaf, torch.zeros(shape, dtype=torch.long))
            else:
                owner.register_parameter(leaf, nn.Parameter(torch.empty(shape), requires_grad=False))

    def _get(self, name, dtype):
        obj = self
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        if isinstance(obj, PackedTensor):  # not yet unpacked (a model built without from_pretrained)
            return obj.dequantize(dtype)
        return obj

    def _row_gather(self):
        """skeleton_row: the inverse of row_index (output j is row j of [t ; X_rest t] taken at inverse[j]),
        computed once and again only when row_index is replaced, moved or overwritten."""
        index = self.row_index
        cached = self._inverse
        if cached is None or cached[0] is not index or cached[1] != index._version:
            with torch.inference_mode(False):  # a plain tensor, usable outside inference mode later
                inverse = torch.empty_like(index)
                inverse.scatter_(0, index, torch.arange(index.numel(), device=index.device, dtype=index.dtype))
            cached = self._inverse = (index, index._version, inverse)
        return cached[2]

    def unpack_(self, dtype):
        """Replaces every PackedTensor by a parameter holding its dequantized value."""
        for name, module in list(self.named_modules()):
            if isinstance(module, PackedTensor):
                *path, leaf = name.split(".")
                owner = self.get_submodule(".".join(path)) if path else self
                value = module.dequantize(dtype)
                delattr(owner, leaf)
                owner.register_parameter(leaf, nn.Parameter(value, requires_grad=False))

    def forward(self, x):
        dt = x.dtype
        if self.kind == "cur":
            t = F.linear(x, self._get("R", dt))
            u = self._get("U", dt)
            if u is not None:
                t = F.linear(t, u)
            c = self._get("C", dt) if u is not None else self._get("CU", dt)
            return F.linear(t, c, self._get("bias", dt))
        if self.kind == "svd":
            return F.linear(F.linear(x, self._get("BLinear.weight", dt)), self._get("ALinear.weight", dt),
                            self._get("ALinear.bias", dt))
        if self.kind == "skeleton_row":
            t = F.linear(x, self._get("W_I", dt))
            y = torch.cat((t, F.linear(t, self._get("X_rest", dt))), dim=-1).index_select(-1, self._row_gather())
            bias = self._get("bias", dt)
            return y if bias is None else y + bias
        if self.kind == "skeleton_col":
            k = self.rank
            v = x.index_select(-1, self.col_index)
            z = v[..., :k] + F.linear(v[..., k:], self._get("Z_rest", dt))
            return F.linear(z, self._get("W_J", dt), self._get("bias", dt))
        return F.linear(x, self._get("weight", dt), self._get("bias", dt))

    def extra_repr(self):
        return f"kind={self.kind}, in_features={self.in_features}, out_features={self.out_features}"


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class AcurAttention(nn.Module):
    """Causal attention with narrowed query/key (qk_head_dim) and value (v_head_dim) heads."""

    def __init__(self, config, layer_idx, shape, old):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        hidden = config.hidden_size
        self.head_dim = getattr(config, "head_dim", None) or hidden // self.num_heads
        self.qk_dim = shape.get("qk_head_dim") or self.head_dim
        self.v_dim = shape.get("v_head_dim") or self.head_dim
        self.scaling = self.head_dim ** -0.5
        self.rotary = hasattr(old, "o_proj")  # LLaMA family; OPT has out_proj and no rotary
        # A plain list, not a buffer: from_pretrained builds the model on the meta device.
        self.qk_dims = shape.get("qk_dims") or list(range(self.head_dim)) * self.num_kv_heads
        out_name = "o_proj" if self.rotary else "out_proj"

        def linear(name, n_in, n_out):
            o = getattr(old, name)
            new = nn.Linear(n_in, n_out, bias=o.bias is not None)
            return new.to(dtype=o.weight.dtype, device=o.weight.device)

        self.q_proj = linear("q_proj", hidden, self.num_heads * self.qk_dim)
        self.k_proj = linear("k_proj", hidden, self.num_kv_heads * self.qk_dim)
        self.v_proj = linear("v_proj", hidden, self.num_kv_heads * self.v_dim)
        setattr(self, out_name, linear(out_name, self.num_heads * self.v_dim, hidden))
        self.out_name = out_name

    def forward(self, hidden_states, *args, **kwargs):
        b, t, _ = hidden_states.shape
        groups = self.num_heads // self.num_kv_heads
        q = self.q_proj(hidden_states).view(b, t, self.num_heads, self.qk_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(b, t, self.num_kv_heads, self.qk_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, t, self.num_kv_heads, self.v_dim).transpose(1, 2)
        position_embeddings = kwargs.get("position_embeddings")
        if self.rotary:
            if position_embeddings is None:
                raise ValueError("AcurAttention: the LLaMA family needs position_embeddings")
            cos, sin = position_embeddings  # [B, T, head_dim]
            # The kept dimensions' own frequencies, per KV head: [B, kv, T, qk_dim].
            dims = torch.tensor(self.qk_dims, dtype=torch.long, device=cos.device).view(self.num_kv_heads, self.qk_dim)
            cos = cos[..., dims].permute(0, 2, 1, 3).to(q.dtype)
            sin = sin[..., dims].permute(0, 2, 1, 3).to(q.dtype)
            k = k * cos + _rotate_half(k) * sin
            cos_q, sin_q = cos.repeat_interleave(groups, dim=1), sin.repeat_interleave(groups, dim=1)
            q = q * cos_q + _rotate_half(q) * sin_q
        cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
        if cache is not None and hasattr(cache, "update"):
            k, v = cache.update(k, v, self.layer_idx, {"cache_position": kwargs.get("cache_position")})
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        s = k.shape[2]
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 0 and torch.is_tensor(args[-1]):
            mask = args[-1]
        # Causal positions: query i (the last t of s keys) sees keys j <= i + s - t.
        causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
        if mask is None:
            attn_mask = causal
        elif mask.dtype == torch.bool:
            attn_mask = mask[..., -t:, :s] if mask.dim() == 4 else causal & mask[:, None, None, :s]
        elif mask.dim() == 4:
            attn_mask = mask[..., -t:, :s].to(q.dtype)
        else:  # a 2-d padding mask (1 = keep)
            attn_mask = causal & mask[:, None, None, :s].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scaling)
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.v_dim)
        return getattr(self, self.out_name)(out), None


def _narrow_attention(model, config):
    """Replaces the attention of every layer whose query/key or value heads config.json narrows."""
    shapes = getattr(config, "layer_shapes", None) or []
    for name, module in list(model.named_modules()):
        if not name.endswith(".self_attn") or ".layers." not in name:
            continue
        index = int(name.split(".layers.", 1)[1].split(".", 1)[0])
        shape = (shapes[index] if index < len(shapes) else None) or {}
        if not (shape.get("qk_head_dim") or shape.get("v_head_dim")):
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, AcurAttention(config, index, shape, module))


_MLP_PRODUCERS = ("mlp.gate_proj", "mlp.up_proj", "fc1")  # output features = the MLP width
_MLP_CONSUMERS = ("mlp.down_proj", "fc2")                 # input features = the MLP width


def _narrow_layers(model, config):
    """Replaces the MLP Linears of every layer that config.json's "layer_shapes" narrows."""
    shapes = getattr(config, "layer_shapes", None)
    if not shapes:
        return
    if not isinstance(shapes, list) or len(shapes) != config.num_hidden_layers:
        raise ValueError('config.json: "layer_shapes" must list one object per layer')
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or ".layers." not in name:
            continue
        index_text, _, rest = name.split(".layers.", 1)[1].partition(".")
        width = (shapes[int(index_text)] or {}).get("intermediate_size")
        if not width:
            continue
        if rest in _MLP_PRODUCERS:
            new = nn.Linear(module.in_features, width, bias=module.bias is not None)
        elif rest in _MLP_CONSUMERS:
            new = nn.Linear(width, module.out_features, bias=module.bias is not None)
        else:
            continue
        new.to(dtype=module.weight.dtype, device=module.weight.device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)


class Acur{{PREFIX}}ForCausalLM({{PREFIX}}ForCausalLM):
    """{{PREFIX}}ForCausalLM whose compressed Linear layers are AcurLinear modules."""

    config_class = Acur{{PREFIX}}Config

    def __init__(self, config):
        super().__init__(config)
        _narrow_layers(self, config)
        _narrow_attention(self, config)
        section = config.acur_section() if hasattr(config, "acur_section") else getattr(config, "acur", {})
        quantization = section.get("quantization")
        for name, spec in section.get("layers", {}).items():
            parent_name, _, child = name.rpartition(".")
            parent = self.get_submodule(parent_name) if parent_name else self
            old = getattr(parent, child, None)
            if not isinstance(old, nn.Linear):
                raise ValueError(f'config.json: acur layer "{name}" is not a Linear layer of this model')
            if (old.in_features, old.out_features) != (spec["in_features"], spec["out_features"]):
                raise ValueError(f'config.json: acur layer "{name}" does not match the model\'s shape')
            setattr(parent, child, AcurLinear(spec, quantization))

    def acur_unpack_(self):
        """Dequantizes every packed tensor into a plain parameter (done by from_pretrained)."""
        modules = [m for m in self.modules() if isinstance(m, AcurLinear)]
        if not any(isinstance(m, PackedTensor) for a in modules for m in a.modules()):
            return self
        dtype = self.get_input_embeddings().weight.dtype
        for module in modules:
            module.unpack_(dtype)
        # The weights are no longer packed: a save_pretrained() of this model stores them plainly.
        section = getattr(self.config, "acur", None)
        if isinstance(section, dict):
            section = dict(section)
            section.pop("quantization", None)
            section["layers"] = {
                name: {k: v for k, v in spec.items() if k != "quantized"}
                for name, spec in section.get("layers", {}).items()
                if spec.get("kind") != "dense"
            }
            self.config.acur = section
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.acur_unpack_()
        return loaded
