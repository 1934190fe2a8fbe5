"""BaMSGAN training: networks, data, edge blur, memory repository, loss and the training loop.

`training.constants`, `training.latents` and `training.data.images` are the single definitions of
the model's constants, the seed -> latent mapping and the image conversion; export, serving and
the clients all use them.
"""
