"""Video data: the Zarr episode store, token store, training windows, filtering, importers, collection."""
