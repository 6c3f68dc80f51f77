"""llmpipe: raw text in, a trained GPT-style model out, every step a versioned DVC stage."""

__version__ = "0.1.0"
