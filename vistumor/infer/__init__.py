"""Stage 6, whole slides: one batched pass over a slide's tissue grid gives each patch's
tumor probability and its raw Grad-CAM++ map; from them come the probability heatmap, the
stitched Grad-CAM++ heatmap, lesion polygons (QuPath GeoJSON, ASAP XML), detection points
for the CAMELYON16 FROC, a slide score and a summary figure.

Modules in data-flow order: ``inputs`` (which slides), ``geometry`` (the grid at the
checkpoint's scale), ``reader`` (each pixel decoded about once, at the right level),
``engine`` (the one pass), ``heatmap``, ``stitch`` (the Grad-CAM++ canvas), ``lesions``,
``detections``, ``figures``, ``batch`` (status, resume, shards).
"""
