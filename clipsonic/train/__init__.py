"""Training: the loop (`loop`: checkpoints, exact resumption, torchrun) and one task per model.

`unet` (the spectrogram diffusion UNet, and the CLIP-TTA baseline), `prior` (the SD diffusion
prior), `vocoder` (BigVGAN, with `discriminators`). The demo CLIP's contrastive training is
`clipsonic.demo.contrastive`.
"""
