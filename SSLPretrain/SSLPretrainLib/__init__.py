"""The work of the SSLPretrain module (pretraining logic and widget parts), kept out of the thin module file."""
