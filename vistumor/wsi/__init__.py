"""Stage 1, whole-slide images: slides through OpenSlide (``slide``, ``catalog``) and the
pathologists' lesion annotations (``annotations``), both in level-0 pixel coordinates; the
annotation files themselves are read and written by ``asap`` (ASAP XML) and ``geojson``
(QuPath GeoJSON), one :class:`~vistumor.wsi.shapes.Shape` per annotation."""
