"""Backbones (an encoder and its mirror decoder), registered in parts.BACKBONES."""
