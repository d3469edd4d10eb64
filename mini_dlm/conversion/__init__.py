"""What AR-to-diffusion conversion adds to training (notes 09): starting from an AR checkpoint's
weights (a2d.py), Fast-dLLM v2's token shift (token_shift.py) and complementary masks
(complementary.py)."""
