"""Gradient accumulation: one optimizer step from several micro-batches.

A global batch too large for device memory is split into `k` equal
micro-batches; a `lax.scan` computes the loss and gradients of each in turn
and averages them, so only one micro-batch's activations are alive at a time.
With equal micro-batch sizes the averaged loss and gradients equal those of
the whole batch (up to float summation order).

Micro-batch `i` takes rows i, i+k, i+2k, ... of every batch: the batch axis is
sharded in contiguous blocks over devices, so every device holds its share of
every micro-batch and splitting moves no data.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cover_jax.parallel import sharding


def value_and_grad(loss_fn: Callable, num_micro_batches: int) -> Callable:
  """`jax.value_and_grad(loss_fn, has_aux=True)`, averaged over micro-batches.

  Args:
    loss_fn: `loss_fn(params, batches, rng) -> (loss, aux)`; `batches` is any
      pytree whose arrays have the batch as leading axis (scalars, such as a
      dataset index, are given unchanged to every micro-batch).
    num_micro_batches: k; 1 is plain `jax.value_and_grad`.

  Returns:
    `f(params, batches, rng) -> ((loss, aux), grads)`: loss, aux and grads are
    the means over the k micro-batches; micro-batch i gets
    `jax.random.fold_in(rng, i)`.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_micro_batches == 1:
    return grad_fn
  k = num_micro_batches

  def accumulated(params, batches, rng):
    micro = jax.tree.map(lambda x: split_micro_batches(x, k), batches)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(grad_fn, params, first, rng))

    def body(total, xs):
      i, micro_batches = xs
      micro_batches = jax.tree.map(_constrain_batch, micro_batches)
      out = grad_fn(params, micro_batches, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, total, out), None

    total, _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    return jax.tree.map(lambda x: x / k, total)
  return accumulated


def split_micro_batches(x: jax.Array, k: int) -> jax.Array:
  """(B, ...) -> (k, B/k, ...), micro-batch i = rows i, i+k, ...; scalars repeated."""
  if x.ndim == 0:
    return jnp.broadcast_to(x, (k,))
  if x.shape[0] % k:
    raise ValueError(f"batch of {x.shape[0]} does not split into {k} equal micro-batches")
  return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def _constrain_batch(x: jax.Array) -> jax.Array:
  return x if x.ndim == 0 else sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1))
