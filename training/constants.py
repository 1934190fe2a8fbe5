"""The model's constants: the one place every part (trainer, export, serving, clients) reads them."""

Z_DIM = 128  # latent size: the generator maps FP32 [B, Z_DIM] to images
IMAGE_SIZE = 64  # generated and training images are IMAGE_SIZE x IMAGE_SIZE
IMAGE_CHANNELS = 3  # RGB
MAX_BATCH_SIZE = 256  # served model's max_batch_size (config.pbtxt) and the TensorRT profile's max batch

# Seeds are non-negative INT64; defined in latents.py, which is copied alone into every model version.
from training.latents import MAX_SEED  # noqa: E402,F401
