"""The network: attention, 2D RoPE, image-index embedding, transformer blocks, the CroCo encoder, the fusion
transformer, the DPT heads, and `Fast3R`, which composes them as public stages (encode, fuse, decode)."""
