"""Bottlenecks (between encoder and decoder), registered in parts.BOTTLENECKS."""
