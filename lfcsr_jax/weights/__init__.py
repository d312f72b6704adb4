"""Weights: PyTorch state dicts and the VGG19 / discriminator weight converters."""
