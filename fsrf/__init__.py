"""FSRF: factorization-guided semantic recovery for multimodal sentiment analysis with missing modalities."""

MODALITIES = ("l", "a", "v")  # fixed order everywhere: language, audio, visual
