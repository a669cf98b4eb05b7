"""IC-LoRA generation on diffusers' LTX-2 pipeline plus the studio's attention processor."""
