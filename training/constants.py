"""The model's constants: the one place every part (trainer, export, serving, clients) reads them."""

Z_DIM = 128  # latent size: the generator maps FP32 [B, Z_DIM] to images
IMAGE_SIZE = 64  # generated and training images are IMAGE_SIZE x IMAGE_SIZE
IMAGE_CHANNELS = 3  # RGB
MAX_SEED = 2**63 - 1  # seeds are non-negative INT64
