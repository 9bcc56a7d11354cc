"""TAEHV, the tiny video autoencoder: `modeling` (decoder, encoder, streaming) and `params`
(taew2_1.pth's names, and a random checkpoint for tests)."""
