"""The networks: SAGAN's generator and discriminator (sagan.py), their self-attention (attention.py,
with the OpenAI Triton kernel in attention_kernel.py) and fp32 spectral normalisation (spectral_norm.py)."""
