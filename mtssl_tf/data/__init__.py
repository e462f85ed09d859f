"""Image sources for the pretext tasks: TFDS, TFRecord shards, image folders and toy images."""
