"""TimeSformer backbone in Flax NNX, with the official TimeSformer semantics.

Bertasius et al., "Is Space-Time Attention All You Need for Video
Understanding?" (ICML 2021); reference code facebookresearch/TimeSformer.

Token layout. The official model keeps one sequence of ``1 + N*T`` tokens with
patch token (n, t) at index ``1 + n*T + t`` (patch-major, time-minor). We keep
the same order but hold it as two arrays: the cls token ``cls_bd`` and the
patch tokens ``x_bntd``; flattening ``x_bntd`` gives exactly the reference
order, so converted weights see the same sequence.

Divided space-time block (attention_type='divided_space_time'):
  (a) temporal attention over the T tokens of each patch position (cls
      excluded), then the D->D ``temporal_fc``, then residual;
  (b) spatial attention per frame over [cls, N patches]; the block-input cls is
      copied into every frame and its T outputs are averaged;
  (c) MLP (exact erf GELU) over all tokens.
``temporal_fc`` and the time embedding start at zero, so at initialisation the
model is a framewise ViT whose cls token is averaged over frames (as in the
official code, whose zero-init covers block 0 too).

Other attention types: 'joint_space_time' (one attention over all 1 + N*T
tokens) and 'space_only' (a per-frame ViT; tokens averaged over frames before
the final norm, as the reference does).

Differences from the reference that do not change inference: stochastic depth
drops a whole clip's residual (the reference drops per patch position in the
temporal branch and per frame in the spatial one), and embedding dropout is
applied once after both position and time embeddings.

One difference that does: for a non-square input whose grid differs from the
configured one, the position embedding is resized per grid axis; the reference
resizes only when the token count differs (treating the grid as square).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cover_jax.config import allowed
from cover_jax.parallel import sharding
from cover_jax.models import block_stack

_CUDNN_DTYPES = ("bfloat16", "float16")

# name: (width, depth, heads, mlp_dim). ViT sizes as in big_vision; `Mu` is a
# micro model for CPU demos and tests.
VARIANT_DIMS = {
    "Mu": (64, 4, 4, 256),
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
_VARIANT_RE = re.compile(r"^(?P<name>[A-Za-z]+)/(?P<patch>[1-9]\d*)$")


@dataclasses.dataclass(frozen=True)
class TimeSformerDims:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int


def decode_variant(variant: str) -> TimeSformerDims:
  """'B/16' -> TimeSformerDims(width=768, depth=12, heads=12, mlp=3072, patch=16)."""
  match = _VARIANT_RE.match(variant)
  if not match or match["name"] not in VARIANT_DIMS:
    raise ValueError(
        f"unknown model variant {variant!r}: use NAME/PATCH with NAME in "
        f"{sorted(VARIANT_DIMS)} and PATCH a positive integer, e.g. 'B/16'.")
  width, depth, heads, mlp = VARIANT_DIMS[match["name"]]
  return TimeSformerDims(width, depth, heads, mlp, int(match["patch"]))


def resolve_attention_impl(impl: str, dtype, head_dim: int, attention_dropout: float) -> str:
  """'xla' or 'cudnn' for the configured `impl` (see allowed.ATTENTION_IMPLS)."""
  if impl not in allowed.ATTENTION_IMPLS:
    raise ValueError(f"attention_impl {impl!r} not in {allowed.ATTENTION_IMPLS}")
  problems = cudnn_attention_problems(dtype, head_dim, attention_dropout)
  if impl == "cudnn" and problems:
    raise ValueError("attention_impl 'cudnn' cannot run here: " + "; ".join(problems)
                     + ". Use attention_impl='auto' or 'xla'.")
  if impl == "auto":
    return "xla" if problems else "cudnn"
  return impl


def cudnn_attention_problems(dtype, head_dim: int, attention_dropout: float) -> list[str]:
  """Why cuDNN flash attention cannot run this model on this backend (empty: it can)."""
  dtype = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  problems = []
  if jax.default_backend() != "gpu":
    problems.append(f"the JAX backend is {jax.default_backend()}, not gpu")
  if dtype not in _CUDNN_DTYPES:
    problems.append(f"compute dtype {dtype} (cuDNN flash attention needs bfloat16 or float16)")
  if head_dim % 8 or head_dim > 128:
    problems.append(f"head dim {head_dim} (cuDNN needs a multiple of 8, at most 128)")
  if attention_dropout > 0:
    problems.append(f"attention_dropout {attention_dropout} (the fused kernel has none here)")
  return problems


def _param(init, shape, logical_axes, rngs: nnx.Rngs) -> nnx.Param:
  # Sharding is applied when the whole state is created under
  # jit(out_shardings=...), not eagerly per variable.
  return nnx.Param(init(rngs.params(), shape, jnp.float32),
                   out_sharding=logical_axes, eager_sharding=False)


def _dense_init(logical_axes):
  return nnx.with_partitioning(nnx.initializers.xavier_uniform(), logical_axes,
                               eager_sharding=False)


def _zeros_init(logical_axes):
  return nnx.with_partitioning(nnx.initializers.zeros_init(), logical_axes,
                               eager_sharding=False)


def _layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      dim, epsilon=1e-6, rngs=rngs,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",), eager_sharding=False),
      bias_init=_zeros_init(("embed",)))


def drop_path(x: jax.Array, rate, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
  """Stochastic depth: zeroes the whole residual of a random subset of clips.

  `rate` is a Python float (a block's own) or a traced scalar (a scanned
  block's, block_stack.run_blocks). The keys come from their own `droppath`
  stream, so whether a rate-0 block draws one leaves dropout's keys alone.
  """
  if deterministic or (isinstance(rate, float) and rate == 0.0):
    return x
  keep = jax.random.bernoulli(rngs.droppath(), 1.0 - rate, (x.shape[0],))
  keep = keep.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class MultiHeadAttention(nnx.Module):
  """Self-attention over one axis of an arbitrary token array.

  The fused qkv projection keeps heads as their own parameter axis so that
  tensor parallelism can shard heads; a reference ``qkv`` weight of shape
  (3D, D) maps onto ``qkv_kernel`` (D, 3, H, D/H) by a reshape and transpose.
  """

  def __init__(self, dim: int, num_heads: int, *, attention_dropout: float,
               dropout: float, dtype, attention_impl: str = "xla", rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
    head_dim = dim // num_heads
    self.num_heads, self.dtype = num_heads, dtype
    self.attention_impl = resolve_attention_impl(attention_impl, dtype, head_dim,
                                                 attention_dropout)
    self.scale = head_dim ** -0.5
    self.qkv_kernel = _param(nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3)),
                             (dim, 3, num_heads, head_dim),
                             ("embed", "qkv", "heads", "head_dim"), rngs)
    self.qkv_bias = _param(nnx.initializers.zeros_init(), (3, num_heads, head_dim),
                           ("qkv", "heads", "head_dim"), rngs)
    self.proj_kernel = _param(nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                              (num_heads, head_dim, dim),
                              ("heads", "head_dim", "embed"), rngs)
    self.proj_bias = _param(nnx.initializers.zeros_init(), (dim,), ("embed",), rngs)
    self.attention_dropout = nnx.Dropout(attention_dropout)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, axis: int, *, deterministic: bool,
               rngs: nnx.Rngs | None) -> jax.Array:
    """Attends along `axis` of x (..., D); every other axis is a batch axis."""
    x_bld = jnp.moveaxis(x, axis, -2).astype(self.dtype)
    if x_bld.shape[-2] == 1 and (deterministic or self.attention_dropout.rate == 0):
      out_blhk = self._one_token_attention(x_bld)
    else:
      out_blhk = self._attention(x_bld, deterministic, rngs)
    out_mhk, lead = out_blhk.reshape((-1,) + out_blhk.shape[-2:]), out_blhk.shape[:-2]
    out_md = jnp.einsum("mhk,hkd->md", out_mhk, self.proj_kernel[...].astype(self.dtype))
    out = (out_md + self.proj_bias[...].astype(self.dtype)).reshape(lead + out_md.shape[-1:])
    out = self.dropout(out, deterministic=deterministic, rngs=rngs)
    return jnp.moveaxis(out, -2, axis)

  def _one_token_attention(self, x_bld):
    """Attention over a single token (the temporal attention of an image, T=1).

    Its softmax weight is exactly 1, so the output is exactly the token's value
    projection: q and k are not computed (an image step costs 1/T of a video one).
    """
    v_kernel = self.qkv_kernel[...][:, 2].astype(self.dtype)
    x_md, lead = as_rows(x_bld)
    v_mhk = jnp.einsum("md,dhk->mhk", x_md, v_kernel) + self.qkv_bias[...][2].astype(self.dtype)
    return v_mhk.reshape(lead + v_mhk.shape[1:])

  def _attention(self, x_bld, deterministic, rngs):
    x_md, lead = as_rows(x_bld)
    qkv_mshk = jnp.einsum("md,dshk->mshk", x_md, self.qkv_kernel[...].astype(self.dtype))
    qkv = (qkv_mshk + self.qkv_bias[...].astype(self.dtype)).reshape(lead + qkv_mshk.shape[1:])
    q_blhk, k_blhk, v_blhk = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    if self.attention_impl == "cudnn":
      return self._fused_attention(q_blhk, k_blhk, v_blhk)
    return self._einsum_attention(q_blhk, k_blhk, v_blhk, deterministic, rngs)

  def _einsum_attention(self, q_blhk, k_blhk, v_blhk, deterministic, rngs):
    logits = jnp.einsum("...qhk,...lhk->...hql", q_blhk * self.scale, k_blhk)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = self.attention_dropout(weights, deterministic=deterministic, rngs=rngs)
    return jnp.einsum("...hql,...lhk->...qhk", weights, v_blhk)

  def _fused_attention(self, q_blhk, k_blhk, v_blhk):
    """cuDNN flash attention; it takes one batch axis, so the leading ones are merged."""
    lead, token_shape = q_blhk.shape[:-3], q_blhk.shape[-3:]
    q, k, v = (a.reshape((-1,) + token_shape) for a in (q_blhk, k_blhk, v_blhk))
    out = jax.nn.dot_product_attention(q, k, v, scale=self.scale, implementation="cudnn")
    return out.reshape(lead + token_shape)


def as_rows(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
  """(..., D) -> ((M, D), leading shape): tokens as the rows of one matrix.

  A weight matmul on (M, D) rows rather than on (B, N, T, D) is the same
  math, but XLA:CPU then computes the weight gradient as one plain
  (D, M) x (M, F) matmul; with several contracted token axes it transposed
  the gradient in memory first and ran a slower kernel (docs/performance.md).
  The reshape is free (row-major).
  """
  return x.reshape(-1, x.shape[-1]), x.shape[:-1]


def exact_gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU written as PyTorch writes it: x/2 * (1 + erf(x/sqrt(2))).

  Same function as `jax.nn.gelu(approximate=False)`, which goes through erfc;
  on XLA:CPU erf is one vectorised rational polynomial while erfc branches
  (select) and calls exp, which made GELU a visible share of a CPU step.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(2.0 ** -0.5, x.dtype)))


class Mlp(nnx.Module):
  def __init__(self, dim: int, mlp_dim: int, *, dropout: float, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, mlp_dim, dtype=dtype, rngs=rngs,
                          kernel_init=_dense_init(("embed", "mlp")),
                          bias_init=_zeros_init(("mlp",)))
    self.fc2 = nnx.Linear(mlp_dim, dim, dtype=dtype, rngs=rngs,
                          kernel_init=_dense_init(("mlp", "embed")),
                          bias_init=_zeros_init(("embed",)))
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, *, deterministic: bool, rngs: nnx.Rngs | None):
    x_md, lead = as_rows(x)
    h_mf = exact_gelu(self.fc1(x_md))
    h_mf = self.dropout(h_mf, deterministic=deterministic, rngs=rngs)
    out_md = self.dropout(self.fc2(h_mf), deterministic=deterministic, rngs=rngs)
    return out_md.reshape(lead + out_md.shape[-1:])


class Block(nnx.Module):
  """One transformer block; parameter names follow the official TimeSformer."""

  def __init__(self, dims: TimeSformerDims, attention_type: str, *,
               dropout: float, attention_dropout: float, drop_path_rate: float,
               dtype, attention_impl: str = "xla", rngs: nnx.Rngs):
    d = dims.width
    attn_kw = dict(attention_dropout=attention_dropout, dropout=dropout, dtype=dtype,
                   attention_impl=attention_impl, rngs=rngs)
    self.attention_type, self.drop_path_rate = attention_type, drop_path_rate
    self.norm1 = _layer_norm(d, rngs)
    self.attn = MultiHeadAttention(d, dims.num_heads, **attn_kw)
    if attention_type == "divided_space_time":
      self.temporal_norm1 = _layer_norm(d, rngs)
      self.temporal_attn = MultiHeadAttention(d, dims.num_heads, **attn_kw)
      # Zero init: the temporal branch starts as a no-op (official code).
      self.temporal_fc = nnx.Linear(d, d, dtype=dtype, rngs=rngs,
                                    kernel_init=_zeros_init(("embed", "embed_out")),
                                    bias_init=_zeros_init(("embed",)))
    self.norm2 = _layer_norm(d, rngs)
    self.mlp = Mlp(d, dims.mlp_dim, dropout=dropout, dtype=dtype, rngs=rngs)

  def _drop_path(self, x, deterministic, rngs, rate):
    return drop_path(x, self.drop_path_rate if rate is None else rate, deterministic, rngs)

  def _mlp_residual(self, x, deterministic, rngs, rate):
    return x + self._drop_path(self.mlp(self.norm2(x), deterministic=deterministic, rngs=rngs),
                               deterministic, rngs, rate)

  def vit(self, tokens, axis: int, *, deterministic: bool, rngs, rate=None):
    """Plain pre-norm ViT block attending along `axis` (joint / space-only).

    `rate`: the drop-path rate of a scanned block (None: this block's own).
    """
    kw = dict(deterministic=deterministic, rngs=rngs)
    tokens = tokens + self._drop_path(self.attn(self.norm1(tokens), axis, **kw), deterministic,
                                      rngs, rate)
    return self._mlp_residual(tokens, deterministic, rngs, rate)

  def divided(self, cls_bd, x_bntd, *, deterministic: bool, rngs, rate=None):
    """Divided space-time block on (cls, patch tokens); `rate` as in `vit`."""
    kw = dict(deterministic=deterministic, rngs=rngs)
    # (a) Temporal attention over T for each patch position; cls excluded.
    res_bntd = self.temporal_attn(self.temporal_norm1(x_bntd), 2, **kw)
    res_md, lead = as_rows(self._drop_path(res_bntd, deterministic, rngs, rate))
    res_bntd = self.temporal_fc(res_md).reshape(lead + res_md.shape[-1:])
    xt_bntd = x_bntd + res_bntd
    # (b) Spatial attention within each frame over [cls, N patches].
    b, _, t, d = xt_bntd.shape
    cls_b1td = jnp.broadcast_to(cls_bd[:, None, None, :], (b, 1, t, d)).astype(xt_bntd.dtype)
    xs_bntd = jnp.concatenate([cls_b1td, xt_bntd], axis=1)
    res_bntd = self._drop_path(self.attn(self.norm1(xs_bntd), 1, **kw), deterministic, rngs, rate)
    cls_bd = cls_bd + res_bntd[:, 0].mean(axis=1)  # average cls over frames
    x_bntd = xt_bntd + res_bntd[:, 1:]
    x_bntd = sharding.constrain(x_bntd, ("batch", "length", "time", "act_embed"))
    # (c) MLP on every token.
    return (self._mlp_residual(cls_bd, deterministic, rngs, rate),
            self._mlp_residual(x_bntd, deterministic, rngs, rate))


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of PyTorch's legacy 'nearest' resize (floor(i * in / out))."""
  scale = in_size / out_size
  return np.minimum(np.floor(np.arange(out_size) * scale).astype(np.int64), in_size - 1)


class TimeSformer(nnx.Module):
  """Video backbone: (B, T, H, W, 3) float frames -> (B, D) cls features."""

  def __init__(self, dims: TimeSformerDims, *, image_size: int, num_frames: int,
               attention_type: str = "divided_space_time", dropout: float = 0.0,
               attention_dropout: float = 0.0, stochastic_depth: float = 0.0,
               time_embed_init_std: float = 0.0, dtype=jnp.float32, remat: str = "none",
               scan_layers: bool = False, attention_impl: str = "auto", rngs: nnx.Rngs):
    if attention_type not in allowed.ATTENTION_TYPES:
      raise ValueError(f"attention_type {attention_type!r} not in {allowed.ATTENTION_TYPES}")
    if remat not in allowed.REMAT:
      raise ValueError(f"remat {remat!r} not in {allowed.REMAT}")
    if image_size % dims.patch_size:
      raise ValueError(f"image_size {image_size} not divisible by patch size {dims.patch_size}")
    d, p = dims.width, dims.patch_size
    self.dims, self.attention_type, self.dtype = dims, attention_type, dtype
    self.remat, self.scan_layers = remat, scan_layers
    self.grid = image_size // p
    self.patch_kernel = _param(nnx.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
                               (p, p, 3, d), (None, None, None, "embed"), rngs)
    self.patch_bias = _param(nnx.initializers.zeros_init(), (d,), ("embed",), rngs)
    trunc = nnx.initializers.truncated_normal(stddev=0.02)
    self.cls_token = _param(trunc, (d,), ("embed",), rngs)
    self.pos_embed = _param(trunc, (1 + self.grid ** 2, d), ("length", "embed"), rngs)
    if attention_type != "space_only":
      # Zero by default, as the official code: the model starts blind to frame
      # order and learns it. A small random init (time_embed_init_std > 0) is an
      # option for from-scratch runs.
      time_init = (nnx.initializers.truncated_normal(stddev=time_embed_init_std)
                   if time_embed_init_std > 0 else nnx.initializers.zeros_init())
      self.time_embed = _param(time_init, (num_frames, d), ("time", "embed"), rngs)
    self.dropout = nnx.Dropout(dropout)
    make_block = lambda rate, rngs: Block(
        dims, attention_type, dropout=dropout, attention_dropout=attention_dropout,
        drop_path_rate=float(rate), dtype=dtype, attention_impl=attention_impl, rngs=rngs)
    # Stochastic depth rises linearly over the layers, from 0 at the first.
    rates = tuple(float(r) for r in np.linspace(0.0, stochastic_depth, dims.depth))
    # A scanned model's one block cannot hold per-layer rates: they are a
    # scanned input instead (block_stack.run_blocks).
    self.scanned_drop_path_rates = rates if scan_layers and stochastic_depth > 0 else None
    if scan_layers:  # one Block whose parameters carry a leading `layers` axis
      self.blocks = block_stack.make_stacked(lambda r: make_block(0.0, r), dims.depth, rngs)
    else:
      self.blocks = nnx.List([make_block(rate, rngs) for rate in rates])
    self.norm = _layer_norm(d, rngs)

  def embed_patches(self, x_bthwc: jax.Array) -> jax.Array:
    """Per-frame p x p patch embedding (a conv with kernel = stride = p)."""
    b, t, h, w, c = x_bthwc.shape
    p = self.dims.patch_size
    gh, gw = h // p, w // p
    # One copy regroups the pixels into patch rows in token order (b, n, t),
    # n = row * grid_w + col; the matmul (and its weight gradient) then runs
    # on those rows, and XLA does not regroup the pixels a second time,
    # transposed, for the kernel's gradient.
    patches = x_bthwc.astype(self.dtype).reshape(b, t, gh, p, gw, p, c)
    patches_mk = patches.transpose(0, 2, 4, 1, 3, 5, 6).reshape(b * gh * gw * t, p * p * c)
    kernel_kd = self.patch_kernel[...].astype(self.dtype).reshape(p * p * c, -1)
    x_md = patches_mk @ kernel_kd + self.patch_bias[...].astype(self.dtype)
    return x_md.reshape(b, gh * gw, t, -1)

  def position_embedding(self, grid_h: int, grid_w: int) -> jax.Array:
    """(1 + N, D) position embedding, nearest-resized if the grid differs."""
    pos = self.pos_embed[...]
    if (grid_h, grid_w) == (self.grid, self.grid):
      return pos
    patch_pos = pos[1:].reshape(self.grid, self.grid, -1)
    patch_pos = patch_pos[nearest_indices(self.grid, grid_h)][:, nearest_indices(self.grid, grid_w)]
    return jnp.concatenate([pos[:1], patch_pos.reshape(grid_h * grid_w, -1)])

  def time_embedding(self, num_frames: int) -> jax.Array:
    """(T, D) time embedding, nearest-resized (an image, T=1, gets slot 0)."""
    time = self.time_embed[...]
    if num_frames == time.shape[0]:
      return time
    return time[nearest_indices(time.shape[0], num_frames)]

  def __call__(self, x_bthwc: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    b, t, h, w, _ = x_bthwc.shape
    p = self.dims.patch_size
    if h % p or w % p:
      raise ValueError(f"frame size {h}x{w} is not divisible by patch size {p}")
    x_bthwc = sharding.constrain(x_bthwc, ("batch", "time", None, None, None))
    x_bntd = self.embed_patches(x_bthwc)
    pos = self.position_embedding(h // p, w // p).astype(self.dtype)
    cls_bd = jnp.broadcast_to(self.cls_token[...].astype(self.dtype) + pos[0], (b, pos.shape[-1]))
    x_bntd = x_bntd + pos[1:, None, :]
    if self.attention_type == "space_only":
      cls_bd = self._space_only(cls_bd, x_bntd, deterministic, rngs)
    else:
      x_bntd = x_bntd + self.time_embedding(t).astype(self.dtype)
      cls_bd = self.dropout(cls_bd, deterministic=deterministic, rngs=rngs)
      x_bntd = self.dropout(x_bntd, deterministic=deterministic, rngs=rngs)
      cls_bd, x_bntd = _constrain_tokens((cls_bd, x_bntd))
      cls_bd, x_bntd = self._run_blocks((cls_bd, x_bntd), deterministic, rngs)
    return self.norm(cls_bd).astype(jnp.float32)

  def _run_blocks(self, carry, deterministic: bool, rngs):
    """All blocks on `carry` (loop or scan, remat per block: block_stack.py)."""
    attention_type = self.attention_type

    def step(block, carry, layer_key, rate):  # positional: nnx.remat maps arguments by position
      return _block_step(block, carry, layer_key, rate, attention_type=attention_type,
                         deterministic=deterministic)
    return block_stack.run_blocks(step, self.blocks, carry, None if deterministic else rngs,
                                  remat=self.remat, scanned=self.scan_layers,
                                  drop_path_rates=self.scanned_drop_path_rates)

  def _space_only(self, cls_bd, x_bntd, deterministic, rngs):
    """Per-frame ViT; tokens averaged over frames before the final norm."""
    b, _, t, d = x_bntd.shape
    cls_b1td = jnp.broadcast_to(cls_bd[:, None, None, :], (b, 1, t, d))
    tokens_bltd = jnp.concatenate([cls_b1td, x_bntd], axis=1)
    tokens_bltd = self.dropout(tokens_bltd, deterministic=deterministic, rngs=rngs)
    tokens_bltd = self._run_blocks(tokens_bltd, deterministic, rngs)
    return tokens_bltd[:, 0].mean(axis=1)


def layer_rngs(layer_key: jax.Array | None) -> nnx.Rngs | None:
  """A block's own streams from its layer key: dropout, and stochastic depth apart."""
  if layer_key is None:
    return None
  return nnx.Rngs(dropout=jax.random.fold_in(layer_key, 0),
                  droppath=jax.random.fold_in(layer_key, 1))


def _block_step(block: Block, carry, layer_key, rate, *, attention_type: str,
                deterministic: bool):
  """One block on the carry of `attention_type`, constrained at the block's output."""
  kw = dict(deterministic=deterministic, rngs=layer_rngs(layer_key), rate=rate)
  if attention_type == "space_only":  # carry: tokens (B, 1 + N, T, D), per-frame ViT
    return sharding.constrain(block.vit(carry, 1, **kw), ("batch", "length", "time", "act_embed"))
  cls_bd, x_bntd = carry
  if attention_type == "divided_space_time":
    return _constrain_tokens(block.divided(cls_bd, x_bntd, **kw))
  b, n, t, d = x_bntd.shape  # joint: one sequence [cls, (n, t) patch-major]
  tokens_bld = jnp.concatenate([cls_bd[:, None], x_bntd.reshape(b, n * t, d)], axis=1)
  tokens_bld = block.vit(tokens_bld, 1, **kw)
  return _constrain_tokens((tokens_bld[:, 0], tokens_bld[:, 1:].reshape(b, n, t, d)))


def _constrain_tokens(carry):
  """Block-boundary sharding of (cls_bd, x_bntd): batch split, features whole."""
  cls_bd, x_bntd = carry
  return (sharding.constrain(cls_bd, ("batch", "act_embed")),
          sharding.constrain(x_bntd, ("batch", "length", "time", "act_embed")))
