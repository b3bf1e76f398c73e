"""napari glue: reader, sample data and dock widgets (the only floor that imports napari or Qt)."""
