"""Numbers learned from good images after training: INT8 activation ranges (``int8``) and the score
normalisation and default threshold (``scores``). Nothing here imports torch."""
