"""CPU kernels for plain Flax modules of convae_jax.models, put in by config (`kernels.use`).

Each file holds the kernel of one module class; `kernels.KERNELS` names them.
"""
