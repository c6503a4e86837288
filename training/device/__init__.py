"""Device plumbing: process ranks, number formats, the fused LM head, the shared prefix."""
