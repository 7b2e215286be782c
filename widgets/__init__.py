"""stacklab.widgets: Jupyter widgets that display exposures, regions and catalogs."""

__all__: list[str] = []
