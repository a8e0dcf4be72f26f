"""On-disk formats written natively: HF Arrow dataset folders and MosaicML MDS shards."""
