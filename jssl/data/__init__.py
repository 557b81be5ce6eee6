"""Input pipelines: grain over TFDS data sources, and the embedded offline datasets."""
