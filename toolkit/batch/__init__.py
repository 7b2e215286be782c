"""Batch runs of curated notebooks: papermill tasks over parameter grids on Dask."""
