"""The request path, one module per stage, in the order a request meets them:

decode (bytes → upright RGB) → fit (each image to the model's input, and the view its maps are drawn
onto) → batch (one queue per model) → run (the ONNX Runtime session) → postprocess (the task's
results: top-k labels, thresholded detections on the original image) → encode (the selected maps as
float16 or PNG, on the grid or the image). service/dataplane.py runs them for each request.
"""
