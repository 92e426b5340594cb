"""Trains and evaluates an autoencoder: `python launch.py --config configs/cifar.py --workdir DIR`.

The flags and what they do: `python launch.py --help` (convae_jax/main.py).
"""
from convae_jax import main

if __name__ == '__main__':
  main.run()
