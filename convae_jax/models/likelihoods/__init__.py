"""Likelihoods (reconstruction losses), registered in parts.LIKELIHOODS."""
