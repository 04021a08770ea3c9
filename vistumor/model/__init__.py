"""Stage 4, the model: timm backbones and their weights, the patch classifier
(LightningModule), metrics, devices, checkpoint loading and batched prediction."""
