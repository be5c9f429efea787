"""Counter-based random bits for the query loops of the black-box attacks (Square, SPSA,
HopSkipJump).

Each example gets a two-word uint32 seed from the attack's JAX key (one threefry call); every
later draw is a cheap integer hash of the seed and a counter (``step_bits``), which keeps
threefry out of long query loops, whose compile time it would otherwise dominate. Restart ``r``
of a seed is ``restart_seed(seed, r)``; ``INIT_SALT`` separates a starting point's stream from
the loop's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

INIT_SALT = (0x68E31DA4, 0xB5297A4D)  # separates the starting point's stream from the loop's


def hash32(v: jax.Array) -> jax.Array:
    """``lowbias32`` integer hash (C. Wellons): a bijective avalanche mix of uint32 words."""
    v = v ^ (v >> 16)
    v = v * jnp.uint32(0x7FEB352D)
    v = v ^ (v >> 15)
    v = v * jnp.uint32(0x846CA68B)
    return v ^ (v >> 16)


def step_bits(seed: jax.Array, i: jax.Array, num_words: int) -> jax.Array:
    """``num_words`` pseudo-random uint32 words for iteration ``i`` from a 2-word ``seed``.

    A counter-based stream (hash of ``seed`` and the counter ``i * num_words + j``): the seeds come
    from the attack's JAX key; the cheap hash keeps threefry out of the query loop, whose compile
    time it would otherwise dominate.
    """
    counter = jnp.asarray(i).astype(jnp.uint32) * jnp.uint32(num_words)
    counter = counter + jnp.arange(num_words, dtype=jnp.uint32)
    return hash32(hash32(counter ^ seed[0]) + seed[1])


def restart_seed(seed: jax.Array, r: jax.Array) -> jax.Array:
    """The seed of restart ``r`` (restart 0 of any run is the same: restarts nest)."""
    return hash32(seed ^ hash32(r * jnp.uint32(0x9E3779B9) + jnp.uint32(0x632BE5AB)))


def random_signs(words: jax.Array, dtype) -> jax.Array:
    """``±1`` from the low bit of each random word."""
    return jnp.where((words & 1) == 1, 1.0, -1.0).astype(dtype)
