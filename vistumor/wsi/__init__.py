"""Stage 1, whole-slide images: slides through OpenSlide (``slide``) and the pathologists'
lesion annotations (``annotations``), both in level-0 pixel coordinates."""
