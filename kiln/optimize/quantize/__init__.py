"""int8 algorithms the candidates share: the scheme for this CPU, accuracy-aware fallback, SmoothQuant."""
