"""Neural networks: the VQ-GAN tokenizer (vqgan.py and its parts) and the VideoGPT prior (videogpt.py)."""
